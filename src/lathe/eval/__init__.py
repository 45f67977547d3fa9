"""lathe.eval (see ARCHITECTURE.md for what lives here)."""
