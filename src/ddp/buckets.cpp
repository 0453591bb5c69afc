// The pure assignment of parameters to gradient buckets.
#include "ddp/buckets.h"

#include "common/error.h"

#include <algorithm>
#include <string>

namespace dtrain {

std::vector<std::vector<size_t>> assign_buckets(const std::vector<int64_t>& parameter_bytes,
                                                int64_t first_bucket_bytes, int64_t bucket_bytes) {
  if (first_bucket_bytes <= 0 || bucket_bytes <= 0) throw UsageError("bucket sizes must be positive");
  std::vector<std::vector<size_t>> buckets;
  std::vector<size_t> current;
  int64_t current_bytes = 0;
  for (size_t i = parameter_bytes.size(); i-- > 0;) {
    const int64_t cap = buckets.empty() ? first_bucket_bytes : bucket_bytes;
    if (!current.empty() && current_bytes + parameter_bytes[i] > cap) {
      buckets.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.push_back(i);
    current_bytes += parameter_bytes[i];
  }
  if (!current.empty()) buckets.push_back(std::move(current));
  return buckets;
}

int64_t padded_numel(int64_t numel, int world) {
  if (world < 1 || numel < 0) throw Error("padded_numel needs numel >= 0 and world >= 1");
  return (numel + world - 1) / world * world;
}

std::vector<ShardPiece> shard_pieces(const std::vector<int64_t>& numels, int world, int rank) {
  if (rank < 0 || rank >= world) throw Error("shard_pieces: rank " + std::to_string(rank) + " outside the world");
  int64_t total = 0;
  for (int64_t numel : numels) total += numel;
  const int64_t chunk = padded_numel(total, world) / world;
  const int64_t begin = rank * chunk, end = begin + chunk;
  std::vector<ShardPiece> pieces;
  int64_t offset = 0;
  for (size_t i = 0; i < numels.size(); ++i) {
    const int64_t first = std::max(begin, offset), last = std::min(end, offset + numels[i]);
    if (first < last) pieces.push_back({i, first - offset, first, last - first});
    offset += numels[i];
  }
  return pieces;
}

}  // namespace dtrain
