// Which parameters share a gradient bucket: a pure function, as in PyTorch
// DDP. Parameters are taken in reverse registration order (the order backward
// finishes their gradients); the first bucket holds up to
// `first_bucket_bytes` (small, so communication starts early), the rest up to
// `bucket_bytes`. A parameter larger than the cap gets a bucket of its own.
// With a sharded optimizer state (ZeRO-1), each bucket is also cut into one
// equal chunk per rank: shard_pieces says which parts of which tensors a
// rank's chunk holds.
#pragma once
#include <cstdint>
#include <vector>

namespace dtrain {

// Returns, per bucket in launch order, the indices (into `parameter_bytes`)
// of its parameters, in reverse registration order.
std::vector<std::vector<size_t>> assign_buckets(const std::vector<int64_t>& parameter_bytes,
                                                int64_t first_bucket_bytes, int64_t bucket_bytes);

// ZeRO-1: a bucket packs its tensors (`numels`, in bucket order) from offset
// 0, padded with zeros to padded_numel, a multiple of `world`; rank r owns
// the chunk [r * chunk, (r + 1) * chunk) with chunk = padded_numel / world.
int64_t padded_numel(int64_t numel, int world);

// One tensor's part of a rank's chunk: `numel` elements from
// `offset_in_tensor` of the bucket's `tensor`-th tensor (flattened), at
// `offset_in_bucket` in the bucket.
struct ShardPiece {
  size_t tensor = 0;
  int64_t offset_in_tensor = 0;
  int64_t offset_in_bucket = 0;
  int64_t numel = 0;
  bool operator==(const ShardPiece& other) const {
    return tensor == other.tensor && offset_in_tensor == other.offset_in_tensor &&
           offset_in_bucket == other.offset_in_bucket && numel == other.numel;
  }
};

// The pieces of rank `rank`'s chunk, in bucket order; empty when the chunk is
// all padding. The pieces of all ranks cover every element exactly once.
std::vector<ShardPiece> shard_pieces(const std::vector<int64_t>& numels, int world, int rank);

}  // namespace dtrain
