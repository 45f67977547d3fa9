"""lathe.kernels (see ARCHITECTURE.md for what lives here)."""
