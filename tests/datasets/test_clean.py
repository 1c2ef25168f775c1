import pytest

from selfsup.datasets.clean import clean_prose, clean_tweet, dedup_key, fix_mojibake, undo_flight_replacement


@pytest.mark.parametrize(
    "raw, expected",
    [
        # real rows of the CrowdFlower file (decoded as Latin-1), before -> after
        ("Itäó»s a sad day", "It's a sad day"),
        ("I look at GoogleÕ¢_\x8aÎ_\x86¢s driverless cars", "I look at Google's driverless cars"),
        ("I\x8a\x97Èm on it", "I'm on it"),
        ("äóì@Forever21: The lineup is here!", '"@Forever21: The lineup is here!'),
        ("#Deflateäó_", "#Deflate..."),
        ("his Fiancí©", "his Fiancé"),
    ],
)
def test_mojibake_punctuation_is_mapped_back(raw, expected):
    assert fix_mojibake(raw).strip() == expected


def test_unrecoverable_emoji_residue_is_removed():
    assert clean_tweet("I wanna go to #Coachella2015 BUT its like $500 _ôÖ\x89_ôÖ\x89__ôÖ\x89") == (
        "I wanna go to #Coachella2015 BUT its like $500"
    )
    assert clean_tweet("Sadie hates the google car. ÕôÒ_Ñ_") == "Sadie hates the google car."


def test_underscores_in_handles_survive():
    assert clean_tweet("@_madddddie look") == "@_madddddie look"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("arriving 3 hrs Late Flightr", "arriving 3 hrs later"),
        ("got back an unreLate Flightd copy/paste", "got back an unrelated copy/paste"),
        ("flight Cancelled Flightled", "flight cancelled"),
        ("due to ur Cancelled Flightlation", "due to ur cancellation"),
        ("I will Cancelled Flight my next four flights", "I will cancel my next four flights"),
        ("a chocoLate Flight bar", "a chocolate bar"),
        ("standing in line for reFlight Booking Problems", "standing in line for rebooking"),
        ("the site is down Flight Booking Problems a seat", "the site is down booking a seat"),
        ("an honest delay", "an honest delay"),
    ],
)
def test_late_flight_artifact_is_reversed(raw, expected):
    assert undo_flight_replacement(raw) == expected


def test_clean_tweet_full_chain():
    raw = "@united  flight Cancelled Flightled &amp; bags\nLate Flight äó_ _ôÖ\x89"
    assert clean_tweet(raw) == "@united flight cancelled & bags late ..."


def test_double_escaped_entities_are_unescaped():
    assert clean_tweet("Driving R&amp;amp;D Car") == "Driving R&D Car"
    assert clean_tweet("&lt;3 you") == "<3 you"


def test_clean_prose_keeps_real_unicode():
    assert clean_prose("Caf\u0065\u0301  never\tmind—really") == "Café never mind—really"


def test_dedup_key_ignores_case_and_spacing():
    assert dedup_key("Hello  World\n") == dedup_key("hello world")
    assert dedup_key("hello world") != dedup_key("hello, world")
