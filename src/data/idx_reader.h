// Reads IDX files (the MNIST family's format), gzip-compressed or not, with
// zlib. Checks the magic number, the dimensions and the exact length, so a
// truncated or foreign file is a one-line error instead of garbage data.
// Nothing a header claims is allocated before the data is shown to exist:
// gzip data is inflated in bounded chunks and reading stops as soon as it
// falls short of or exceeds the claim.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dtrain {

struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;  // row-major, product(dims) bytes
};

// The in-memory reader, for files and fuzzing alike: `bytes` is the file's
// content (gzip or raw IDX), `name` what error messages call it. Only
// unsigned-byte IDX (type code 0x08) is accepted; `expected_rank` is the
// number of dimensions the caller needs (3 for images, 1 for labels).
// Throws Error with one line naming `name` and the problem.
IdxArray parse_idx(const uint8_t* bytes, size_t size, const std::string& name, int expected_rank);

// Reads the file at `path` and parses it.
IdxArray read_idx_file(const std::string& path, int expected_rank);

}  // namespace dtrain
