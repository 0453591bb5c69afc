// The pure assignment of parameters to gradient buckets.
#include "ddp/buckets.h"

#include "common/error.h"

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

}  // namespace dtrain
