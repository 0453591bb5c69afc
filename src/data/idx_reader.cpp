#include "data/idx_reader.h"

#include "common/error.h"

#include <zlib.h>

#include <memory>

namespace dtrain {

namespace {

struct GzCloser {
  void operator()(gzFile_s* file) const { gzclose(file); }
};

// Reads exactly `size` bytes or throws, naming what was being read.
void read_exact(gzFile file, const std::string& path, void* out, size_t size, const char* what) {
  auto* bytes = static_cast<uint8_t*>(out);
  size_t done = 0;
  while (done < size) {
    const unsigned chunk = static_cast<unsigned>(std::min<size_t>(size - done, 1u << 30));
    const int got = gzread(file, bytes + done, chunk);
    if (got < 0) {
      int code = 0;
      throw Error(path + " is corrupt (" + gzerror(file, &code) + "); reinstall the data or point --data-dir elsewhere");
    }
    if (got == 0) {
      throw Error(path + " is truncated: it ends inside the " + what + " (" + std::to_string(done) + " of " +
                  std::to_string(size) + " bytes); reinstall the data (apt-get install --reinstall dataset-fashion-mnist)");
    }
    done += static_cast<size_t>(got);
  }
}

}  // namespace

IdxArray read_idx_file(const std::string& path, int expected_rank) {
  // gzopen reads plain files transparently, so both .gz and raw IDX work.
  std::unique_ptr<gzFile_s, GzCloser> file(gzopen(path.c_str(), "rb"));
  if (!file) {
    throw Error("cannot open " + path +
                ": install it (apt-get install dataset-fashion-mnist) or point --data-dir at a folder with the IDX files");
  }
  uint8_t header[4];
  read_exact(file.get(), path, header, 4, "header");
  if (header[0] != 0 || header[1] != 0 || header[2] != 0x08 || header[3] != expected_rank) {
    char magic[16];
    std::snprintf(magic, sizeof magic, "0x%02x%02x%02x%02x", header[0], header[1], header[2], header[3]);
    char wanted[16];
    std::snprintf(wanted, sizeof wanted, "0x000008%02x", expected_rank);
    throw Error(path + " is not an unsigned-byte IDX file of " + std::to_string(expected_rank) +
                " dimensions (magic " + magic + ", expected " + wanted + ")");
  }
  IdxArray array;
  size_t total = 1;
  for (int d = 0; d < expected_rank; ++d) {
    uint8_t size_bytes[4];
    read_exact(file.get(), path, size_bytes, 4, "header");
    const int64_t size = (int64_t{size_bytes[0]} << 24) | (int64_t{size_bytes[1]} << 16) |
                         (int64_t{size_bytes[2]} << 8) | int64_t{size_bytes[3]};
    if (size <= 0) throw Error(path + " has a zero dimension in its header");
    array.dims.push_back(size);
    total *= static_cast<size_t>(size);
  }
  array.data.resize(total);
  read_exact(file.get(), path, array.data.data(), total, "data");
  uint8_t extra;
  if (gzread(file.get(), &extra, 1) != 0) {
    throw Error(path + " has bytes past the size its header declares; it is not a valid IDX file");
  }
  return array;
}

}  // namespace dtrain
