"""Variant names, the named sets `--variants` accepts, and one variant per registered SR model."""

import pytest

from srlib.config import STUDY_VARIANTS, VARIANT_SETS, VARIANTS, expand_variants, make_config
from srlib.errors import ConfigError

EXTRA_SR = ["sr_x2@swift-srgan", "sr_x4@swift-srgan", "sr_x4@ditn-real", "sr_x4@ditn-real-gan"]


def test_the_study_names_keep_their_meaning():
    assert STUDY_VARIANTS == ("original", "resize_x2", "sr_x2", "resize_x4", "sr_x4")
    assert (VARIANTS["sr_x2"].method, VARIANTS["sr_x4"].method) == ("sr", "sr")  # DCTLSA, or --sr-weights
    assert VARIANTS["sr_x4@ditn-real"].method == "sr@ditn-real" and VARIANTS["sr_x4@ditn-real"].scale == 4


def test_the_named_sets():
    assert VARIANT_SETS["study"] == STUDY_VARIANTS
    assert VARIANT_SETS["controls"] == (*STUDY_VARIANTS, "nearest_x2", "nearest_x4")
    assert list(VARIANT_SETS["sr-models"]) == [*STUDY_VARIANTS, *EXTRA_SR]
    assert list(VARIANT_SETS["all"]) == [*STUDY_VARIANTS, "nearest_x2", "nearest_x4", *EXTRA_SR]
    assert set(VARIANT_SETS["all"]) == set(VARIANTS)


@pytest.mark.parametrize(("names", "expected"), [
    (["study"], list(STUDY_VARIANTS)),
    ("controls", [*STUDY_VARIANTS, "nearest_x2", "nearest_x4"]),
    (["sr_x4@swift-srgan", "study", "sr_x2"], ["sr_x4@swift-srgan", *STUDY_VARIANTS]),
    (["nearest_x4", "controls"], ["nearest_x4", *STUDY_VARIANTS, "nearest_x2"]),
    (["original,sr_x4", "sr_x4"], ["original", "sr_x4"]),
    (("study", "sr-models", "all"), [*STUDY_VARIANTS, *EXTRA_SR, "nearest_x2", "nearest_x4"]),
])
def test_expand_variants_keeps_order_without_duplicates(names, expected):
    assert expand_variants(names) == expected


@pytest.mark.parametrize("names", [["study", "sr_x8"], ["sr-model"], [], [" , "]])
def test_unknown_names_list_the_choices(names):
    with pytest.raises(ConfigError, match=r"unknown variant or set .*choose sets "
                                          r"\(study, controls, sr-models, all, study-x2, study-x4\) "
                                          r"or variants \(original, .*sr_x4@ditn-real-gan\)"):
        expand_variants(names)


def test_every_variant_makes_a_config():
    for name in VARIANTS:
        assert make_config(name, "smoke").variant == name


def test_sr_weights_do_not_replace_a_named_sr_model():
    assert make_config("sr_x2", "smoke", sr_weights="mine.pth").sr_weights == "mine.pth"
    with pytest.raises(ConfigError, match="sr_x4@swift-srgan uses its registered weights: drop --sr-weights"):
        make_config("sr_x4@swift-srgan", "smoke", sr_weights="mine.pth")


def test_a_variant_is_defined_once_in_config():
    from srlib.config import DEFAULT_SR_MODEL, VARIANTS, variant_of

    assert (VARIANTS["original"].kind, VARIANTS["original"].px, VARIANTS["original"].sr_model) == ("none", 32, None)
    assert (VARIANTS["resize_x4"].kind, VARIANTS["resize_x4"].px, VARIANTS["resize_x4"].upscale_kind) == (
        "bicubic", 128, "plain")
    assert (VARIANTS["sr_x2"].is_sr, VARIANTS["sr_x2"].sr_model) == (True, DEFAULT_SR_MODEL)
    assert VARIANTS["sr_x4@swift-srgan"].sr_model == "swift-srgan" and VARIANTS["sr_x4@swift-srgan"].kind == "sr"
    assert variant_of("sr_x2") is VARIANTS["sr_x2"]
    unregistered = variant_of("sr_x3@some-model")  # e.g. a record of newer code
    assert (unregistered.kind, unregistered.scale, unregistered.sr_model) == ("sr", 3, "some-model")
    assert variant_of("weird-name") is None and variant_of("resize_x2@m") is None
