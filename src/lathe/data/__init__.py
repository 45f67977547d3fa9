"""lathe.data (see ARCHITECTURE.md for what lives here)."""
