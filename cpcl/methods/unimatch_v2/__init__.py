"""UniMatch V2 (Yang, Zhao, Zhao, 2024) on the generic engine: `C.method = "unimatch_v2"`."""
