"""The analysis: run records -> pandas -> the paper's tables and figures. Never imports the engine."""
