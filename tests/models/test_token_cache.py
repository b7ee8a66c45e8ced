"""The token cache: frames encoded once, reused, refreshed for new episodes, refused for another tokenizer."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from maskvit_mpc.models.data import EpisodeClips, recorded_episodes
from maskvit_mpc.models.token_cache import TokenCache, TokenClips
from maskvit_mpc.models.tokenizer import TokenizerModelConfig, VQModel

sys.path.insert(0, str(Path(__file__).parent))
from tokenizer_helpers import write_episodes  # noqa: E402


def _tokenizer() -> VQModel:
    torch.manual_seed(0)
    cfg = TokenizerModelConfig(
        image_size=16, grid_size=4, base_channels=8, channel_mult=[1, 2, 2], codebook_size=32
    )
    return VQModel(cfg).eval()


def test_token_clips_match_encoding_the_clip_frames(tmp_path: Path) -> None:
    folder = write_episodes(tmp_path / "eps", n=3, steps=6, size=16)
    episodes = recorded_episodes(folder)
    tok = _tokenizer()
    cache = TokenCache.load_or_build(tmp_path / "cache.pt", tok, "tok-a", episodes, progress=False)
    clips = EpisodeClips(episodes, clip_length=3, frame_skip=2)
    tokens = TokenClips(clips, cache)
    assert len(tokens) == len(clips) > 0
    for i in (0, len(clips) - 1):
        clip, tclip = clips[i], tokens[i]
        frames = clip["frames"].permute(0, 3, 1, 2).float() / 255.0
        assert torch.equal(tclip["tokens"], tok.encode(frames))
        assert torch.allclose(tclip["actions"], clip["actions"])


def test_cache_is_reused_extended_and_invalidated(tmp_path: Path, monkeypatch) -> None:
    folder = write_episodes(tmp_path / "eps", n=2, steps=4, size=16)
    tok = _tokenizer()
    path = tmp_path / "cache.pt"
    TokenCache.load_or_build(path, tok, "tok-a", recorded_episodes(folder), progress=False)
    calls = []
    original = tok.encode
    monkeypatch.setattr(tok, "encode", lambda x: calls.append(len(x)) or original(x))
    again = TokenCache.load_or_build(path, tok, "tok-a", recorded_episodes(folder), progress=False)
    assert len(again) == 2 and calls == []  # nothing encoded twice
    write_episodes(tmp_path / "more", n=1, steps=4, size=16)
    more = recorded_episodes(folder) + recorded_episodes(tmp_path / "more")
    assert len(TokenCache.load_or_build(path, tok, "tok-a", more, progress=False)) == 3
    assert calls == [5]  # only the new episode's 5 frames
    rebuilt = TokenCache.load_or_build(path, tok, "tok-b", more, progress=False)  # another tokenizer
    assert len(rebuilt) == 3 and sum(calls) == 5 + 15
    path.write_bytes(b"torn")  # a corrupt cache is rebuilt, not fatal
    assert len(TokenCache.load_or_build(path, tok, "tok-b", more, progress=False)) == 3
