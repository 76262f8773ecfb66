"""A minimal megatron-core tokenizer around our SentencePiece model.

megatron-core's GPTDataset only needs `eod`, `pad`, `vocab_size` (and `unique_identifiers`
for its cache hash); its own SentencePiece tokenizer drags in NeMo-style options and chat
templates we do not use, so the trainer and the tests share this small adapter instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy
import sentencepiece as spm
from megatron.core.tokenizers import MegatronTokenizerBase


class SentencePieceMegatronTokenizer(MegatronTokenizerBase):
    """SentencePiece model exposed through megatron-core's tokenizer interface (EOD = EOS)."""

    def __init__(self, model_path: str | Path) -> None:
        super().__init__(str(model_path), {"library": "sentencepiece"})
        self._processor = spm.SentencePieceProcessor(model_file=str(model_path))
        # Megatron hashes this into its dataset cache names: different models -> different caches.
        self.unique_identifiers = {"class": type(self).__name__, "model_path": str(Path(model_path).resolve()),
                                   "vocab_size": self.vocab_size}

    def tokenize(self, text: str) -> list[int]:
        return self._processor.encode(text)

    def detokenize(self, ids) -> str:
        return self._processor.decode([int(i) for i in numpy.asarray(ids).tolist()])

    @property
    def vocab(self) -> dict[str, int]:
        return {self._processor.id_to_piece(i): i for i in range(self.vocab_size)}

    @property
    def inv_vocab(self) -> dict[int, str]:
        return {i: self._processor.id_to_piece(i) for i in range(self.vocab_size)}

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    @property
    def eod(self) -> int:
        return self._processor.eos_id()

    @property
    def eos(self) -> int:
        return self._processor.eos_id()

    @property
    def bos(self) -> int:
        return self._processor.bos_id()

    @property
    def pad(self) -> int:
        return self._processor.pad_id()

    def apply_chat_template(self, *args, **kwargs):
        raise NotImplementedError("pretraining tokenizer: no chat template")
