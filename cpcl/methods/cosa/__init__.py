"""CoSA (Yang et al., ECCV 2024): weakly supervised co-training with swapping assignments."""
