"""lathe.serve (see ARCHITECTURE.md for what lives here)."""
