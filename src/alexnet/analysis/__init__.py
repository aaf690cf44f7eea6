"""What a trained network learned (Section 6.1): first-layer kernels, and more as they land."""
