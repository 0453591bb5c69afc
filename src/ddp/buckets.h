// Which parameters share a gradient bucket: a pure function, as in PyTorch
// DDP. Parameters are taken in reverse registration order (the order backward
// finishes their gradients); the first bucket holds up to
// `first_bucket_bytes` (small, so communication starts early), the rest up to
// `bucket_bytes`. A parameter larger than the cap gets a bucket of its own.
#pragma once
#include <cstdint>
#include <vector>

namespace dtrain {

// Returns, per bucket in launch order, the indices (into `parameter_bytes`)
// of its parameters, in reverse registration order.
std::vector<std::vector<size_t>> assign_buckets(const std::vector<int64_t>& parameter_bytes,
                                                int64_t first_bucket_bytes, int64_t bucket_bytes);

}  // namespace dtrain
