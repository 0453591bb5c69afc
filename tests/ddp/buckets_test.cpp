#include "ddp/buckets.h"

#include "common/error.h"

#include <gtest/gtest.h>

namespace dtrain {
namespace {

using Buckets = std::vector<std::vector<size_t>>;

TEST(Buckets, AssignsInReverseOrderWithASmallFirstBucket) {
  struct Case {
    std::vector<int64_t> bytes;
    int64_t first, cap;
    Buckets want;
  };
  const Case cases[] = {
      // Everything fits in the first bucket.
      {{10, 20, 30}, 100, 100, {{2, 1, 0}}},
      // First bucket closes at its cap; the rest use the larger cap.
      {{40, 40, 40, 40, 40}, 50, 100, {{4}, {3, 2}, {1, 0}}},
      // Exactly at the cap stays in; one byte more starts a new bucket.
      {{50, 50, 1}, 51, 100, {{2, 1}, {0}}},
      // A parameter larger than the cap gets a bucket of its own.
      {{10, 500, 10}, 100, 100, {{2}, {1}, {0}}},
      // One bucket per parameter.
      {{4, 4, 4}, 1, 1, {{2}, {1}, {0}}},
      // DDP-like sizes: 1 MiB first, 25 MiB after (MLP 784-1024-1024-10).
      {{784 * 1024 * 4, 1024 * 4, 1024 * 1024 * 4, 1024 * 4, 10 * 1024 * 4, 10 * 4},
       1 << 20, 25 << 20, {{5, 4, 3}, {2, 1, 0}}},
      {{}, 1, 1, {}},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(assign_buckets(c.bytes, c.first, c.cap), c.want) << "first " << c.first << " cap " << c.cap;
  }
}

TEST(Buckets, EveryParameterExactlyOnce) {
  std::vector<int64_t> bytes;
  for (int i = 0; i < 50; ++i) bytes.push_back(1 + (i * 7919) % 1000);
  for (int64_t cap : {1, 100, 999, 5000, 1000000}) {
    std::vector<int> seen(bytes.size(), 0);
    for (const auto& bucket : assign_buckets(bytes, 500, cap)) {
      for (size_t i : bucket) ++seen[i];
    }
    for (int count : seen) EXPECT_EQ(count, 1) << "cap " << cap;
  }
}

TEST(Buckets, RejectsNonPositiveCaps) {
  EXPECT_THROW(assign_buckets({1, 2}, 0, 10), UsageError);
  EXPECT_THROW(assign_buckets({1, 2}, 10, -1), UsageError);
}

}  // namespace
}  // namespace dtrain
