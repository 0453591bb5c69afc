// Files that survive a crash, and errors that say why a write failed.
// Checkpoints, exported weights and the run's JSON files are written through
// here: the bytes go to a file, the file is fsynced, and only then renamed
// into place, so a reader sees the old file or the new one, never half of
// one. Failures throw Error naming the path and the OS's reason (strerror:
// "No space left on device", "Permission denied", ...).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace dtrain {

// Writes `size` bytes to `path` (created or truncated) and fsyncs it.
void write_file_synced(const std::string& path, const void* bytes, size_t size);

// write_file_synced to PATH.tmp, then rename onto `path` and fsync its folder.
void write_file_atomically(const std::string& path, const void* bytes, size_t size);
inline void write_file_atomically(const std::string& path, const std::string& text) {
  write_file_atomically(path, text.data(), text.size());
}

// fsyncs a folder, so that renames and new entries in it are durable.
void sync_directory(const std::string& path);

// The whole file; throws Error naming the path and the reason.
std::string read_file(const std::string& path);

// Writes all `size` bytes to an open descriptor (retrying after a signal);
// throws Error naming `path` and the OS's reason.
void write_all(int descriptor, const void* bytes, size_t size, const std::string& path);

// Bytes as lowercase hex digits, two per byte.
std::string hex_text(const void* bytes, size_t size);

// SHA-256 fed piece by piece (OpenSSL).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* bytes, size_t size);
  std::string hex();  // 64 hex digits; ends the digest

 private:
  void* context_;  // EVP_MD_CTX, kept out of this header
};

// SHA-256 as 64 lowercase hex digits (OpenSSL).
std::string sha256_hex(const void* bytes, size_t size);
inline std::string sha256_hex(const std::string& bytes) { return sha256_hex(bytes.data(), bytes.size()); }

// XXH3-128 (xxHash, Debian's libxxhash-dev, compiled in from its header), a
// hash made for checking files: tens of times faster than SHA-256, and no
// defence against a forger, which a checkpoint's check does not need. Fed
// piece by piece; hex() gives its 32 hex digits (the canonical, big-endian
// form `xxhsum -H2` prints).
class Xxh3 {
 public:
  Xxh3();
  ~Xxh3();
  Xxh3(const Xxh3&) = delete;
  Xxh3& operator=(const Xxh3&) = delete;
  void update(const void* bytes, size_t size);
  std::string hex() const;

 private:
  void* state_;  // XXH3_state_t, kept out of this header
};

std::string xxh3_128_hex(const void* bytes, size_t size);
inline std::string xxh3_128_hex(const std::string& bytes) { return xxh3_128_hex(bytes.data(), bytes.size()); }

// CRC-32 (zip's and zlib's), by libdeflate: several times faster than zlib's.
uint32_t crc32_of(const void* bytes, size_t size);

// "cannot write PATH: REASON" for the current errno.
std::string io_failure(const std::string& what, const std::string& path);

}  // namespace dtrain
