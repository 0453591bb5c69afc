// The fuzz harnesses' bodies, one per parser of outside input. libFuzzer
// calls them through tests/fuzz/fuzz_*.cpp; the unit tests replay the seed
// corpus and every kept regression input through them
// (tests/fuzz/regressions_test.cpp), so a finding stays fixed in every build.
// Each returns normally for a result or one clean dtrain::Error, and aborts
// (a finding) otherwise: a crash, another exception, an unclean message, a
// broken round trip.
#pragma once
#include <cstddef>
#include <cstdint>

namespace dtrain::fuzz {

// First byte: the rank the caller expects (odd: 3, images; even: 1, labels).
void idx(const uint8_t* data, size_t size);
// INI text through the same code as --config.
void config(const uint8_t* data, size_t size);
// First byte: the option (a row of the table); the rest: its value.
void option_values(const uint8_t* data, size_t size);
// A weights file (--init-from).
void weights(const uint8_t* data, size_t size);
// A checkpoint's metadata (--resume). First byte even: the rest is
// manifest.json over fixed, valid files ("$model", "$optimizer", "$trainer"
// in it stand for their XXH3-128, "$sha:model" etc. for their SHA-256,
// "$size:model" etc. for their sizes);
// odd: the rest is trainer.json under a matching manifest, then checked for
// a resume against the default options.
void checkpoint(const uint8_t* data, size_t size);

}  // namespace dtrain::fuzz
