"""Text conditioning passed from a text encoder to a backbone."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Conditioning:
    """Token states ``tokens`` [B, L, D] and a boolean ``mask`` [B, L] (True = real token)."""

    tokens: Tensor
    mask: Tensor

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3 or self.mask.shape != self.tokens.shape[:2]:
            raise ValueError(
                f"Conditioning needs tokens [B, L, D] and mask [B, L], got "
                f"{tuple(self.tokens.shape)} and {tuple(self.mask.shape)}"
            )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Conditioning:
        """A copy on ``device`` (tokens cast to ``dtype`` if given)."""
        return Conditioning(self.tokens.to(device=device, dtype=dtype), self.mask.to(device))

    def cat(self, other: Conditioning) -> Conditioning:
        """Stack two batches along the batch axis, padding the shorter token axis (mask False)."""
        length = max(self.tokens.shape[1], other.tokens.shape[1])
        a, b = self.pad_to(length), other.pad_to(length)
        return Conditioning(torch.cat([a.tokens, b.tokens]), torch.cat([a.mask, b.mask]))

    def pad_to(self, length: int) -> Conditioning:
        """Right-pad the token axis to ``length`` with zero tokens and a False mask."""
        extra = length - self.tokens.shape[1]
        if extra <= 0:
            return self
        tokens = torch.nn.functional.pad(self.tokens, (0, 0, 0, extra))
        mask = torch.nn.functional.pad(self.mask, (0, extra), value=False)
        return Conditioning(tokens, mask)

    def select(self, index: slice | Tensor | list[int]) -> Conditioning:
        """The rows ``index`` of the batch."""
        return Conditioning(self.tokens[index], self.mask[index])
