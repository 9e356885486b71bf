"""Networks trained on real data: the models, augmentation (DSA, crop+flip), the training
loop, the flat parameter layout, and the experts whose trajectories the matching follows (their
forgetting and EL2N scores come with them)."""
