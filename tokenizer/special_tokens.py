"""Special-token layout shared by training, the HF export, encoding and the trainer.

The ids are fixed by position so every stage (and every future tokenizer built with
this config) agrees on them without reading the model: pad 0, bos 1, eos 2, unk 3,
then the reserved control tokens.  EOS doubles as Megatron's end-of-document (EOD)
token, which is what the trainer's loss masks and the GPTDataset appends.
"""

from __future__ import annotations

from dataclasses import dataclass

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
EOD_ID = EOS_ID
UNK_ID = 3
FIRST_RESERVED_ID = 4


@dataclass(frozen=True)
class SpecialTokens:
    """Surface strings of the special tokens; their ids follow from the module constants."""

    pad: str = "<pad>"
    bos: str = "<s>"
    eos: str = "</s>"
    unk: str = "<unk>"
    num_reserved: int = 16
    reserved_template: str = "<|reserved_{}|>"

    @classmethod
    def from_config(cls, cfg) -> "SpecialTokens":
        return cls(pad=str(cfg.pad), bos=str(cfg.bos), eos=str(cfg.eos), unk=str(cfg.unk),
                   num_reserved=int(cfg.num_reserved), reserved_template=str(cfg.reserved_template))

    @property
    def reserved(self) -> list[str]:
        """Control tokens kept free for later use (chat turns, FIM, ...); never produced from text."""
        return [self.reserved_template.format(i) for i in range(self.num_reserved)]

    @property
    def count(self) -> int:
        return FIRST_RESERVED_ID + self.num_reserved

    def ids(self) -> dict[str, int]:
        """Name -> id, as documented in docs/tokenizer.md and written into the manifest."""
        table = {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID, "eod": EOD_ID, "unk": UNK_ID}
        for offset, _ in enumerate(self.reserved):
            table[f"reserved_{offset}"] = FIRST_RESERVED_ID + offset
        return table
