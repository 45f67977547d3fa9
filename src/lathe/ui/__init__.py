"""lathe.ui (see ARCHITECTURE.md for what lives here)."""
