from __future__ import annotations

import hashlib
import json

import pytest

from conadv_repro.config import (
    FIELDS,
    Config,
    build_config,
    config_from_dict,
    config_from_overrides,
    format_batch,
    parse_batch,
)
from conadv_repro.errors import UserError
from conadv_repro.presets import TABLE6, scale_batch, table6_hparams


def test_defaults_build_and_round_trip():
    cfg = Config()
    assert config_from_dict(cfg.to_dict()) == cfg
    assert config_from_overrides([]) == cfg


def test_batch_sizes_as_the_paper_writes_them():
    assert parse_batch("32k") == 32768
    assert parse_batch("96k") == 98304  # the official code's 96k
    assert parse_batch("512") == 512
    assert format_batch(65536) == "64k"
    cfg = config_from_overrides(["batch_size=32k", "bn.group_size=64"])
    assert cfg.batch_size == 32 * 1024


def test_run_id_ignores_defaults_runtime_and_paths():
    base = Config().run_id()
    assert len(base) == 12
    # Writing a field at its default gives the same id: a field added later with a default keeps ids.
    assert config_from_overrides(["optim.momentum=0.9", "seed=0"]).run_id() == base
    for item in ("runtime.device=cpu", "runtime.workers=3", "runtime.compile=true", "runtime.log_every=7",
                 "runtime.micro_batch=32", "runtime.threads=1"):
        assert config_from_overrides([item]).run_id() == base, item
    imagenet = config_from_overrides(["data=imagenet"]).run_id()
    assert config_from_overrides(["data=imagenet", "data_root=/somewhere"]).run_id() == imagenet
    for item in ("seed=1", "optim.lr=1.5", "runtime.autocast=bf16", "autoaugment=true", "bn.group_size=16",
                 "paper_batch=32k", "steps=5"):
        assert config_from_overrides([item]).run_id() != base, item


def test_run_id_is_stable_across_versions():
    # Pinned: a change here silently orphans every existing run directory.
    assert Config().run_id() == config_from_overrides([]).run_id()
    assert config_from_overrides(["seed=3"]).run_id() == config_from_overrides(["seed=3"]).run_id()
    # The id is sha256 of the canonical JSON of the schema version and the non-default hashed fields.
    def expected(fields):
        payload = json.dumps({"schema": 1, "fields": fields}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    assert Config().run_id() == expected({})
    assert config_from_overrides(["seed=3", "runtime.workers=2"]).run_id() == expected({"seed": 3})


@pytest.mark.parametrize("item, fragment", [
    ("nosuchkey=1", "unknown config key 'nosuchkey'"),
    ("optim.nosuch=1", "unknown config key 'optim.nosuch'"),
    ("method=sgdx", "method='sgdx' is not allowed"),
    ("data=mnist", "data='mnist' is not allowed"),
    ("batch_size=abc", "batch_size='abc' is not a whole number"),
    ("batch_size=100", "batch_size=100 is not a whole number of BN groups of bn.group_size=32"),
    ("epochs=-1", "epochs=-1.0 must be > 0"),
    ("optim.momentum=1.5", "optim.momentum=1.5 must be <="),
    ("autoaugment=maybe", "autoaugment='maybe' is not true or false"),
    ("runtime.micro_batch=48", "runtime.micro_batch=48 is not a whole number of BN groups"),
    ("seed=1.5", "seed='1.5' is not an integer"),
    ("noequals", "is not key=value"),
])
def test_bad_values_are_one_line_errors(item, fragment):
    with pytest.raises(UserError) as info:
        config_from_overrides([item])
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_a_bn_group_of_one_value_per_channel_is_refused_where_a_feature_map_is_1x1():
    # ResNet-50's ImageNet stem takes 32 px to 1x1 in layer4: one example per group has no variance there.
    small = ["model.name=resnet50", "model.input_size=32", "batch_size=64"]
    with pytest.raises(UserError, match=r"^bn.group_size=1 leaves one value per channel in resnet50's 1x1 "
                                        r"feature maps at model.input_size=32.*allowed: bn.group_size >= 2"):
        config_from_overrides([*small, "bn.group_size=1"])
    config_from_overrides([*small, "bn.group_size=2"])
    config_from_overrides(["model.name=resnet50", "model.input_size=64", "batch_size=64", "bn.group_size=1"])  # 2x2
    config_from_overrides(["model.name=resnet8", "batch_size=64", "bn.group_size=1"])  # the digits' 4x4


def test_table6_rule_uses_the_paper_values_and_refuses_a_clashing_lr():
    for batch, (lr, warmup) in TABLE6.items():
        assert table6_hparams(batch) == (lr, warmup)
    lr_16k, warmup_16k = table6_hparams(16 * 1024)
    assert lr_16k == pytest.approx(35 / 2 ** 0.5) and warmup_16k == pytest.approx(20.0)
    assert table6_hparams(128 * 1024) == TABLE6[96 * 1024]
    with pytest.raises(UserError, match="optim.lr conflicts with optim.lr_rule=table6"):
        config_from_overrides(["optim.lr_rule=table6", "optim.lr=3"])


def test_paper_scale_holds_the_paper_values():
    cfg = config_from_overrides(["scale=paper"])
    assert cfg.model.name == "resnet50" and cfg.data == "imagenet" and cfg.bn.group_size == 64
    assert cfg.epochs == 90 and cfg.optim.weight_decay == 5e-4 and cfg.optim.momentum == 0.9
    assert cfg.optim.label_smoothing == 0.1 and cfg.optim.lr_rule == "table6"
    # A user's override still wins over the preset.
    assert config_from_overrides(["scale=paper", "epochs=10"]).epochs == 10


def test_every_field_has_help():
    for key, f in FIELDS.items():
        assert f.metadata.get("help"), key


def test_import_path_names_are_allowed():
    cfg = build_config({"model.name": "mypkg.nets:build", "data": "mypkg.data:build"})
    assert cfg.model.name == "mypkg.nets:build"


def test_the_official_codes_settings_are_reachable():
    from conadv_repro.presets import OFFICIAL_CODE

    cfg = build_config(OFFICIAL_CODE)
    assert cfg.batch_size == 98304 and cfg.steps == 1301 and cfg.optim.momentum == 0.92
    assert cfg.attack.units == "tf_official" and cfg.attack.target == "random" and cfg.bn.three_way
    assert cfg.conadv.tau == 0 and cfg.attack.bn_mode == "train_moving"


@pytest.mark.parametrize("items, fragment", [
    (["attack.epsilon=3"], "attack.epsilon has no use with method=vanilla; it applies to method=disadv or conadv "
                           "or noise"),
    (["method=noise", "attack.step_size=2"], "attack.step_size has no use with method=noise; it applies to "
                                             "method=disadv or conadv"),
    (["method=disadv", "conadv.tau=2"], "conadv.tau has no use with method=disadv; it applies to method=conadv"),
    (["method=conadv", "conadv.tau=-1"], "conadv.tau=-1 must be >= 0"),
    (["method=disadv", "attack.epsilon=-2"], "attack.epsilon=-2.0 must be >= 0.0"),
    (["method=disadv", "attack.epsilon=256"], "attack.epsilon=256.0 must be <= 255.0"),
    (["method=disadv", "attack.bn_mode=frozen"], "attack.bn_mode='frozen' is not allowed; allowed: train_frozen"),
    (["method=conadv", "attack.bn_mode=train_moving", "conadv.executor=thread"], "cannot run attack.bn_mode"),
    (["method=conadv", "bn.three_way=true"], "bn.three_way=true needs autoaugment=true"),
])
def test_adversarial_bad_values(items, fragment):
    with pytest.raises(UserError) as info:
        config_from_overrides(items)
    assert fragment in str(info.value)


def test_attack_fields_at_default_keep_vanilla_ids():
    assert config_from_overrides(["method=conadv"]).run_id() != Config().run_id()
    assert config_from_overrides(["method=conadv", "attack.epsilon=3", "conadv.executor=thread"]).run_id() == \
        config_from_overrides(["method=conadv"]).run_id()


def test_a_launcher_variation_leaves_the_noise_control_alone_unless_it_uses_the_key():
    from conadv_repro.launch.plan import applies_to

    assert applies_to("attack.epsilon", "noise") and applies_to("attack.loss_weighting", "noise")
    assert not applies_to("attack.step_size", "noise") and not applies_to("attack.bn_mode", "noise")
    assert applies_to("attack.step_size", "disadv")


def test_epsilon_takes_the_whole_pixel_range():
    assert config_from_overrides(["method=disadv", "attack.epsilon=255"]).attack.epsilon == 255.0


def test_a_paper_column_trains_its_scales_batch():
    # Unset, the batch follows the column, as the launcher's rule says (32k at the proxy scale is 32).
    assert config_from_overrides(["scale=proxy", "paper_batch=32k"]).batch_size == scale_batch("proxy", "32k") == 32
    assert config_from_overrides(["scale=proxy", "paper_batch=32k", "batch_size=32"]).batch_size == 32
    # Another batch under the column's label would be read into the wrong cell of a table.
    with pytest.raises(UserError) as info:
        config_from_overrides(["scale=proxy", "paper_batch=32k", "batch_size=96"])
    assert str(info.value) == ("batch_size=96 does not match paper_batch=32k at scale=proxy; allowed: "
                               "batch_size=32, or leave paper_batch empty for a free run")
    assert config_from_overrides(["scale=paper", "paper_batch=64k"]).batch_size == 64 * 1024
    # Without a scale the label is free.
    assert config_from_overrides(["paper_batch=32k", "batch_size=96"]).batch_size == 96
