"""The Gradio console. `lathe.ui.launch(...)` starts it (with the XR bridge); `lathe ui` is the command."""

from lathe.ui.launch import UIHandle, launch

__all__ = ["UIHandle", "launch"]
