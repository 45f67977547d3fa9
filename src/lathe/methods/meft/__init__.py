"""MEFT (spec section 4): a sparse parallel FFN key-value adapter with per-token top-k and
key-expert routing, in two engines (GPU-masked reference; host-offloaded tables with a row
Adam). Importing registers the peft method "meft". See docs/peft.md, section MEFT."""

from lathe.methods.meft.adam import RowAdam
from lathe.methods.meft.config import MeftConfig, reference_num_experts, select_layers
from lathe.methods.meft.layer import MeftMLP, TransferMeter
from lathe.methods.meft.method import Meft, meft_layers
from lathe.methods.meft.tables import Plan, TableStore, init_tables

__all__ = ["Meft", "MeftConfig", "MeftMLP", "Plan", "RowAdam", "TableStore", "TransferMeter", "init_tables",
           "meft_layers", "reference_num_experts", "select_layers"]
