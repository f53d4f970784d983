"""CoSA: weakly supervised co-training with swapping assignments (ECCV 2024)."""
