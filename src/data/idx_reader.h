// Reads IDX files (the MNIST family's format), gzip-compressed or not, with
// zlib. Checks the magic number, the dimensions and the exact length, so a
// truncated or foreign file is a one-line error instead of garbage data.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dtrain {

struct IdxArray {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;  // row-major, product(dims) bytes
};

// Only unsigned-byte IDX (type code 0x08) is accepted. `expected_rank` is the
// number of dimensions the caller needs (3 for images, 1 for labels).
IdxArray read_idx_file(const std::string& path, int expected_rank);

}  // namespace dtrain
