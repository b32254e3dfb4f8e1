from tenants.keys import GENERATED_KEY_LENGTH, KEY_PREFIX, key_display_parts, key_generate, key_is_well_formed


def test_a_generated_key_has_prefix_length_and_valid_checksum():
    key = key_generate()
    assert key.startswith(KEY_PREFIX)
    assert len(key) == GENERATED_KEY_LENGTH
    assert key_is_well_formed(key)


def test_it_refuses_a_mistyped_generated_key():
    key = key_generate()
    flipped = key[:10] + ("A" if key[10] != "A" else "B") + key[11:]
    assert not key_is_well_formed(flipped)
    assert not key_is_well_formed(key[:-1])


def test_imported_keys_without_checksum_are_accepted_but_junk_is_not():
    assert key_is_well_formed("ta_xxx")
    assert not key_is_well_formed("")
    assert not key_is_well_formed("has space")
    assert not key_is_well_formed("x" * 300)


def test_display_shows_prefix_and_last_four_only():
    key = key_generate()
    prefix, last4 = key_display_parts(key)
    assert prefix == key[:8]
    assert last4 == key[-4:]
