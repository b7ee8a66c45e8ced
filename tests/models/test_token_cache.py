"""The token cache: frames encoded once, reused, refreshed for new episodes, refused for another tokenizer."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from maskvit_mpc.configs.schema import DataConfig
from maskvit_mpc.models.data import EpisodeClips, make_datasets, recorded_episodes
from maskvit_mpc.models.token_cache import TokenCache, TokenClips, token_datasets, weights_digest
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


def test_cache_key_follows_the_weights_not_the_file(tmp_path: Path) -> None:
    tok = _tokenizer()
    # the same weights saved twice with different metadata (as an export unpacked again is) load to one key
    for name, extra in (("a.pt", {"unpacked_from": "x.ts"}), ("b.pt", {"unpacked_from": "y.ts"})):
        torch.save({"state": tok.state_dict(), "extra": extra}, tmp_path / name)
    reloaded = []
    for name in ("a.pt", "b.pt"):
        t = _tokenizer()
        with torch.no_grad():
            for p in t.parameters():
                p.add_(1.0)  # differ from tok until the saved weights are loaded
        assert weights_digest(t) != weights_digest(tok)
        t.load_state_dict(torch.load(tmp_path / name)["state"])
        reloaded.append(t)
    assert (tmp_path / "a.pt").read_bytes() != (tmp_path / "b.pt").read_bytes()
    assert weights_digest(reloaded[0]) == weights_digest(reloaded[1]) == weights_digest(tok)
    with torch.no_grad():  # one value changed in the last bit of one parameter changes the key
        p = next(reloaded[1].parameters())
        p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(float("inf")))
    assert weights_digest(reloaded[1]) != weights_digest(tok)
    # so a cache made under one file is reused under the other
    folder = write_episodes(tmp_path / "eps", n=1, steps=3, size=16)
    path = tmp_path / "cache.pt"
    TokenCache.load_or_build(
        path, reloaded[0], weights_digest(reloaded[0]), recorded_episodes(folder), progress=False
    )
    calls = []
    original = tok.encode
    tok.encode = lambda x: calls.append(len(x)) or original(x)
    TokenCache.load_or_build(path, tok, weights_digest(tok), recorded_episodes(folder), progress=False)
    assert calls == []


def test_clips_carry_the_arm_position_at_their_first_frame(tmp_path) -> None:
    """start_pose is the recorded end-effector x, y, z at the clip's first frame; a cache written before
    positions were kept gets them from the episode files without encoding again."""
    folder = write_episodes(tmp_path / "eps", n=3, steps=6, size=16)
    clips = make_datasets(DataConfig(clip_length=3, image_size=16, val_fraction=0.0), [str(folder)], seed=0)
    episodes = [e for part in clips.train.datasets for e in part.episodes]
    tokenizer = _tokenizer()
    cache = TokenCache.load_or_build(tmp_path / "c.pt", tokenizer, "tok", episodes, progress=False)
    tokens = token_datasets(clips.train, cache)
    for i in range(len(tokens)):
        item, pixels = tokens[i], clips.train[i]
        np.testing.assert_allclose(item["start_pose"].numpy(), pixels["poses"][0, :3], rtol=1e-6)
    assert len({tuple(tokens[i]["start_pose"].tolist()) for i in range(len(tokens))}) > 3  # it varies

    data = torch.load(tmp_path / "c.pt", weights_only=True)
    del data["poses"]  # as written before
    torch.save(data, tmp_path / "c.pt")
    calls = []
    tokenizer.encode = lambda *a: calls.append(a)  # encoding again would be a waste
    again = TokenCache.load_or_build(tmp_path / "c.pt", tokenizer, "tok", episodes, progress=False)
    assert not calls and len(again.poses) == len(episodes)
    assert "poses" in torch.load(tmp_path / "c.pt", weights_only=True)


def test_clips_carry_the_token_cells_that_show_an_object(tmp_path: Path) -> None:
    """objects marks the cells of the token grid with any object pixel (segmentation label 2+) in each
    clip frame; a cache written before they were kept gets them without encoding again; episodes without
    segmentation give all-False cells."""
    import h5py

    folder = write_episodes(tmp_path / "eps", n=2, steps=6, size=16)
    episodes = recorded_episodes(folder)
    tok = _tokenizer()  # 16 px images, a 4x4 grid: 4x4-pixel cells
    path = tmp_path / "cache.pt"
    cache = TokenCache.load_or_build(path, tok, "tok", episodes, progress=False)
    clips = EpisodeClips(episodes, clip_length=3, frame_skip=2)
    tokens = TokenClips(clips, cache)
    for i in range(len(clips)):
        episode, start = clips.clip_location(i)
        with h5py.File(episodes[episode].path, "r") as f:
            labels = torch.from_numpy(f["segmentation"][start : start + clips.span : 2])
        expected = (labels >= 2).reshape(3, 4, 4, 4, 4).any(dim=(2, 4))
        assert tokens[i]["objects"].dtype == torch.bool
        assert torch.equal(tokens[i]["objects"], expected)
    assert any(tokens[i]["objects"].any() for i in range(len(tokens)))  # the synthetic scenes have objects

    data = torch.load(path, weights_only=True)
    del data["objects"]  # as written before
    torch.save(data, path)
    calls = []
    tok.encode = lambda *a: calls.append(a)
    again = TokenCache.load_or_build(path, tok, "tok", episodes, progress=False)
    assert calls == [] and len(again.objects) == 2
    assert torch.equal(TokenClips(clips, again)[0]["objects"], tokens[0]["objects"])
    assert "objects" in torch.load(path, weights_only=True)  # written back

    plain = write_episodes(tmp_path / "plain", n=1, steps=6, size=16, segmentation=False)
    bare = recorded_episodes(plain)
    cache = TokenCache.load_or_build(tmp_path / "bare.pt", _tokenizer(), "tok2", bare, progress=False)
    item = TokenClips(EpisodeClips(bare, clip_length=3), cache)[0]
    assert item["objects"].shape == item["tokens"].shape and not item["objects"].any()
