"""lathe.methods (see ARCHITECTURE.md for what lives here)."""
