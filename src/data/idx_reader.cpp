// The IDX reader: gzip through zlib, the magic number, the dimensions and
// the exact length checked, with a one-line error for each.
#include "data/idx_reader.h"

#include "common/error.h"

#include <zlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

namespace dtrain {

namespace {

const char* const kReinstall = "reinstall the data (apt-get install --reinstall dataset-fashion-mnist)";

// "1.7 TB", "784 bytes": what a claimed size means to a person.
std::string human_bytes(double bytes) {
  const char* units[] = {"bytes", "kB", "MB", "GB", "TB", "PB", "EB"};
  int unit = 0;
  while (bytes >= 1000 && unit < 6) {
    bytes /= 1000;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text, unit == 0 ? "%.0f %s" : "%.1f %s", bytes, units[unit]);
  return text;
}

// "2147483647 images of 28x28", "60000 labels", "3x2x4 values".
std::string describe_claim(const std::vector<int64_t>& dims) {
  if (dims.size() == 3) {
    return std::to_string(dims[0]) + " images of " + std::to_string(dims[1]) + "x" + std::to_string(dims[2]);
  }
  if (dims.size() == 1) return std::to_string(dims[0]) + " labels";
  std::string text;
  for (size_t i = 0; i < dims.size(); ++i) text += (i ? "x" : "") + std::to_string(dims[i]);
  return text + " values";
}

// The file's bytes as a stream of IDX bytes: raw, or inflated from gzip
// (several members, as gzip allows) in bounded steps.
class ByteSource {
 public:
  ByteSource(const uint8_t* bytes, size_t size, const std::string& name)
      : bytes_(bytes), size_(size), name_(name), gzip_(size >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b) {
    if (gzip_) {
      stream_.next_in = const_cast<Bytef*>(bytes_);
      stream_.avail_in = static_cast<uInt>(std::min<size_t>(size_, 1u << 30));
      consumed_ = stream_.avail_in;
      if (inflateInit2(&stream_, 15 + 16) != Z_OK) throw Error(name_ + ": cannot start zlib");
    }
  }
  ~ByteSource() {
    if (gzip_) inflateEnd(&stream_);
  }
  ByteSource(const ByteSource&) = delete;
  ByteSource& operator=(const ByteSource&) = delete;

  // Up to `want` bytes into `out`; fewer only at the end of the data.
  size_t read(uint8_t* out, size_t want) {
    if (!gzip_) {
      const size_t got = std::min(want, size_ - position_);
      std::copy(bytes_ + position_, bytes_ + position_ + got, out);
      position_ += got;
      return got;
    }
    size_t done = 0;
    while (done < want && !finished_) {
      if (stream_.avail_in == 0 && consumed_ < size_) {
        stream_.avail_in = static_cast<uInt>(std::min<size_t>(size_ - consumed_, 1u << 30));
        consumed_ += stream_.avail_in;
      }
      stream_.next_out = out + done;
      stream_.avail_out = static_cast<uInt>(std::min<size_t>(want - done, 1u << 20));
      const uInt before = stream_.avail_out;
      const int code = inflate(&stream_, Z_NO_FLUSH);
      done += before - stream_.avail_out;
      if (code == Z_STREAM_END) {
        // Another gzip member may follow; anything else after the end is not
        // data. The input is one buffer: look at it directly, not at what
        // zlib still holds, so a member starting at a refill boundary counts.
        const size_t position = consumed_ - stream_.avail_in;
        if (size_ - position >= 2 && bytes_[position] == 0x1f && bytes_[position + 1] == 0x8b) {
          inflateReset(&stream_);
          stream_.next_in = const_cast<Bytef*>(bytes_ + position);
          stream_.avail_in = static_cast<uInt>(std::min<size_t>(size_ - position, 1u << 30));
          consumed_ = position + stream_.avail_in;
        } else {
          finished_ = true;
        }
      } else if (code == Z_BUF_ERROR && stream_.avail_in == 0 && consumed_ >= size_) {
        throw Error(name_ + " is truncated: its gzip data ends early; " + kReinstall);
      } else if (code != Z_OK && code != Z_BUF_ERROR) {
        throw Error(name_ + " is corrupt (gzip: " + (stream_.msg ? stream_.msg : "error " + std::to_string(code)) +
                    "); " + kReinstall);
      }
    }
    return done;
  }

 private:
  const uint8_t* bytes_;
  size_t size_;
  size_t position_ = 0;  // raw
  size_t consumed_ = 0;  // gzip: input handed to zlib
  std::string name_;
  bool gzip_;
  bool finished_ = false;
  z_stream stream_{};
};

void read_header(ByteSource& source, const std::string& name, uint8_t* out, size_t size) {
  if (source.read(out, size) != size) {
    throw Error(name + " is truncated: it ends inside the header; " + kReinstall);
  }
}

}  // namespace

IdxArray parse_idx(const uint8_t* bytes, size_t size, const std::string& name, int expected_rank) {
  ByteSource source(bytes, size, name);
  uint8_t header[4];
  read_header(source, name, header, 4);
  if (header[0] != 0 || header[1] != 0 || header[2] != 0x08 || header[3] != expected_rank) {
    char magic[16];
    std::snprintf(magic, sizeof magic, "0x%02x%02x%02x%02x", header[0], header[1], header[2], header[3]);
    char wanted[16];
    std::snprintf(wanted, sizeof wanted, "0x000008%02x", expected_rank);
    throw Error(name + " is not an unsigned-byte IDX file of " + std::to_string(expected_rank) +
                " dimensions (magic " + magic + ", expected " + wanted + ")");
  }
  IdxArray array;
  uint64_t total = 1;
  bool overflow = false;
  for (int d = 0; d < expected_rank; ++d) {
    uint8_t size_bytes[4];
    read_header(source, name, size_bytes, 4);
    const int64_t dim = (int64_t{size_bytes[0]} << 24) | (int64_t{size_bytes[1]} << 16) |
                        (int64_t{size_bytes[2]} << 8) | int64_t{size_bytes[3]};
    if (dim <= 0) throw Error(name + " has a zero dimension in its header; it is not a valid IDX file");
    array.dims.push_back(dim);
    overflow = overflow || __builtin_mul_overflow(total, static_cast<uint64_t>(dim), &total);
  }
  // A sane limit (no IDX file comes near 2^48 bytes) that keeps the
  // arithmetic below in range; claims under it are checked against the data.
  constexpr uint64_t kMaxBytes = uint64_t{1} << 48;
  if (overflow || total > kMaxBytes) {
    throw Error(name + ": header claims " + describe_claim(array.dims) + ", more than the " +
                human_bytes(static_cast<double>(kMaxBytes)) + " dtrain reads; it is not a valid IDX file");
  }
  // Grow with the data actually there, in 1 MiB steps, one byte past the claim.
  constexpr size_t kChunk = size_t{1} << 20;
  size_t held = 0;
  while (true) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(kChunk, total + 1 - held));
    array.data.resize(held + want);
    const size_t got = source.read(array.data.data() + held, want);
    held += got;
    if (got < want || held > total) break;
  }
  array.data.resize(std::min<uint64_t>(held, total));
  if (held < total) {
    throw Error(name + " is truncated: its header claims " + describe_claim(array.dims) + " (" +
                human_bytes(static_cast<double>(total)) + "), but the file holds " + std::to_string(held) +
                " bytes of data; " + kReinstall);
  }
  if (held > total) {
    throw Error(name + " has bytes past the size its header declares (" + describe_claim(array.dims) +
                "); it is not a valid IDX file");
  }
  return array;
}

IdxArray read_idx_file(const std::string& path, int expected_rank) {
  std::ifstream file(path, std::ios::binary);
  std::error_code error;
  const auto size = std::filesystem::file_size(path, error);
  if (!file || error || !std::filesystem::is_regular_file(path)) {
    throw Error("cannot open " + path +
                ": install it (apt-get install dataset-fashion-mnist) or point --data-dir at a folder with the IDX files");
  }
  constexpr uintmax_t kMaxFileBytes = uintmax_t{1} << 34;  // 16 GiB: far above any IDX dtrain reads
  if (size > kMaxFileBytes) throw Error(path + " is " + human_bytes(static_cast<double>(size)) + ": not an IDX file dtrain reads");
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  file.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  if (static_cast<uintmax_t>(file.gcount()) != size) throw Error("cannot read " + path + ": " + kReinstall);
  return parse_idx(bytes.data(), bytes.size(), path, expected_rank);
}

}  // namespace dtrain
