"""lathe.xr_bridge (see ARCHITECTURE.md for what lives here)."""
