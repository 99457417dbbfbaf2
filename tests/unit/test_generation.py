"""The stop tokens every generation (training samples, eval, `inpo answer`) is given."""

from __future__ import annotations

import json

from helpers import eos_is_not_end_of_turn

from inpo.generation.generator import stop_token_ids
from inpo.models.tiny import build_tokenizer


def test_stop_tokens_are_the_end_of_turn_and_every_eos(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 3}))
    eos_is_not_end_of_turn(tmp_path)
    end_of_turn, eos = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert json.loads((tmp_path / "generation_config.json").read_text())["eos_token_id"] == eos
    assert stop_token_ids(str(tmp_path)) == sorted([end_of_turn, eos])
    # generation_config.json may list several EOS ids (Llama 3 Instruct: [128001, 128009])
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, 40]}))
    assert stop_token_ids(str(tmp_path)) == sorted([end_of_turn, eos, 40])
    (tmp_path / "generation_config.json").unlink()
    assert stop_token_ids(str(tmp_path)) == sorted([end_of_turn, eos])
