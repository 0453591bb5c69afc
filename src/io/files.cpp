// Crash-safe writes (a temporary file, fsync, rename, fsync of the folder),
// errors that carry the OS's reason, and SHA-256.
#include "io/files.h"

#include "common/error.h"

#include <libdeflate.h>
#include <openssl/evp.h>
#define XXH_INLINE_ALL  // header-only: no library to link or to carry in the GPU kit
#include <xxhash.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

namespace dtrain {

std::string io_failure(const std::string& what, const std::string& path) {
  return "cannot " + what + " " + path + ": " + std::strerror(errno);
}

void write_all(int descriptor, const void* bytes, size_t size, const std::string& path) {
  const char* next = static_cast<const char*>(bytes);
  while (size > 0) {
    const ssize_t written = ::write(descriptor, next, size);
    if (written < 0 && errno == EINTR) continue;  // a preemption signal arrived
    if (written <= 0) {
      if (written == 0) errno = ENOSPC;
      throw Error(io_failure("write", path));
    }
    next += written;
    size -= static_cast<size_t>(written);
  }
}

void write_file_synced(const std::string& path, const void* bytes, size_t size) {
  const int descriptor = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (descriptor < 0) throw Error(io_failure("write", path));
  try {
    write_all(descriptor, bytes, size, path);
  } catch (const Error&) {
    ::close(descriptor);
    throw;
  }
  if (::fsync(descriptor) != 0) {
    const std::string message = io_failure("sync", path);
    ::close(descriptor);
    throw Error(message);
  }
  if (::close(descriptor) != 0) throw Error(io_failure("write", path));
}

void sync_directory(const std::string& path) {
  const int descriptor = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (descriptor < 0) throw Error(io_failure("open folder", path));
  const int result = ::fsync(descriptor);
  const std::string message = result != 0 ? io_failure("sync folder", path) : "";
  ::close(descriptor);
  if (result != 0) throw Error(message);
}

void write_file_atomically(const std::string& path, const void* bytes, size_t size) {
  const std::string temporary = path + ".tmp";
  try {
    write_file_synced(temporary, bytes, size);
  } catch (const Error&) {
    std::remove(temporary.c_str());
    throw;
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const std::string message = io_failure("move into place", path);
    std::remove(temporary.c_str());
    throw Error(message);
  }
  const size_t slash = path.find_last_of('/');
  sync_directory(slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash));
}

std::string read_file(const std::string& path) {
  const int descriptor = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) throw Error(io_failure("read", path));
  std::string text;
  char buffer[1 << 16];
  for (;;) {
    const ssize_t count = ::read(descriptor, buffer, sizeof buffer);
    if (count < 0 && errno == EINTR) continue;
    if (count < 0) {
      const std::string message = io_failure("read", path);
      ::close(descriptor);
      throw Error(message);
    }
    if (count == 0) break;
    text.append(buffer, static_cast<size_t>(count));
  }
  ::close(descriptor);
  return text;
}

std::string hex_text(const void* bytes, size_t size) {
  static const char* kHex = "0123456789abcdef";
  const auto* data = static_cast<const unsigned char*>(bytes);
  std::string text;
  text.reserve(2 * size);
  for (size_t i = 0; i < size; ++i) {
    text += kHex[data[i] >> 4];
    text += kHex[data[i] & 15];
  }
  return text;
}

Sha256::Sha256() : context_(EVP_MD_CTX_new()) {
  auto* context = static_cast<EVP_MD_CTX*>(context_);
  if (!context || EVP_DigestInit_ex(context, EVP_sha256(), nullptr) != 1) {
    EVP_MD_CTX_free(context);
    throw Error("SHA-256 failed (OpenSSL)");
  }
}

Sha256::~Sha256() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(context_)); }

void Sha256::update(const void* bytes, size_t size) {
  if (EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(context_), bytes, size) != 1) throw Error("SHA-256 failed (OpenSSL)");
}

std::string Sha256::hex() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(context_), digest, &length) != 1) {
    throw Error("SHA-256 failed (OpenSSL)");
  }
  return hex_text(digest, length);
}

std::string sha256_hex(const void* bytes, size_t size) {
  Sha256 digest;
  digest.update(bytes, size);
  return digest.hex();
}

Xxh3::Xxh3() : state_(XXH3_createState()) {
  if (!state_ || XXH3_128bits_reset(static_cast<XXH3_state_t*>(state_)) != XXH_OK) {
    XXH3_freeState(static_cast<XXH3_state_t*>(state_));
    throw Error("XXH3 failed (out of memory)");
  }
}

Xxh3::~Xxh3() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }

void Xxh3::update(const void* bytes, size_t size) {
  if (XXH3_128bits_update(static_cast<XXH3_state_t*>(state_), bytes, size) != XXH_OK) throw Error("XXH3 failed");
}

std::string Xxh3::hex() const {
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, XXH3_128bits_digest(static_cast<const XXH3_state_t*>(state_)));
  return hex_text(canonical.digest, sizeof canonical.digest);
}

std::string xxh3_128_hex(const void* bytes, size_t size) {
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, XXH3_128bits(bytes, size));
  return hex_text(canonical.digest, sizeof canonical.digest);
}

uint32_t crc32_of(const void* bytes, size_t size) { return libdeflate_crc32(0, bytes, size); }

}  // namespace dtrain
