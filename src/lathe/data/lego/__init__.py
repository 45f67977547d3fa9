"""LEGO data: bricks on a stud lattice, manuals in the LEGO-MRTA JSON layout, a seeded generator of
valid assemblies, and the LEGO-MRTA conversation formats (four-section files, v1/v2 exports).

The conversation *generation* pipeline needs the assembly simulator and an LLM, so it lives one
layer up, in `lathe.methods.lego.mrta`.
"""

from lathe.data.lego.bricks import COLOURS, HEIGHTS, SIZES, Brick, lexicon, parse_piece, piece_lexicon, piece_name
from lathe.data.lego.conversations import (SECTIONS, Chunk, Conversation, chunk_manual, hf_split, load_v1, load_v2,
                                           parse_conversation_file, postprocess, split_v1, split_v2, v1_prompt,
                                           v1_rows, v2_prompt, v2_rows, write_rows)
from lathe.data.lego.generator import box_of, extent_of, generate_manual, generate_manuals
from lathe.data.lego.manual import Manual, Step, load_manual, load_manuals, manual_from_json, save_manuals, task_label
from lathe.data.lego.validity import Problem, assembly_problems, check_assembly, is_valid_assembly

__all__ = ["SECTIONS", "Chunk", "Conversation", "chunk_manual", "hf_split", "load_v1", "load_v2",
           "parse_conversation_file", "postprocess", "split_v1", "split_v2", "v1_prompt", "v1_rows", "v2_prompt",
           "v2_rows", "write_rows", "COLOURS", "HEIGHTS", "SIZES", "Brick", "lexicon", "parse_piece", "piece_lexicon", "piece_name",
           "box_of", "extent_of", "generate_manual", "generate_manuals", "Manual", "Step", "load_manual",
           "load_manuals", "manual_from_json", "save_manuals", "task_label", "Problem", "assembly_problems",
           "check_assembly", "is_valid_assembly"]
