"""The ORAL generator: Mamba backbone, diffusion head, conditioning."""
