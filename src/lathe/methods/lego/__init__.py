"""The LEGO assembly assistant, pure PyTorch/Python: the 18 XR tools, the assembly simulator, the vision
back ends, the LEGO-MRTA conversation pipeline and the cerebral agent."""

from lathe.methods.lego.simulator import AssemblySimulator, ToolResult
from lathe.methods.lego.tools import DIRECTIONS, TOOL_NAMES, TOOLS, ToolArgError, validate_args, wrap

__all__ = ["AssemblySimulator", "ToolResult", "DIRECTIONS", "TOOL_NAMES", "TOOLS", "ToolArgError",
           "validate_args", "wrap"]
