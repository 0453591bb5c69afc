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

TEST(Buckets, ShardPiecesCutTheBucketIntoEqualChunks) {
  struct Case {
    std::vector<int64_t> numels;
    int world, rank;
    std::vector<ShardPiece> want;
  };
  const Case cases[] = {
      // World 1: the whole bucket, one piece per tensor.
      {{3, 5}, 1, 0, {{0, 0, 0, 3}, {1, 0, 3, 5}}},
      // 8 elements over 2 ranks: chunks of 4; tensor 1 is split.
      {{3, 5}, 2, 0, {{0, 0, 0, 3}, {1, 0, 3, 1}}},
      {{3, 5}, 2, 1, {{1, 1, 4, 4}}},
      // 7 elements over 4 ranks: padded to 8, chunks of 2; the last is half padding.
      {{7}, 4, 3, {{0, 6, 6, 1}}},
      // 2 elements over 4 ranks: ranks 2 and 3 hold only padding.
      {{1, 1}, 4, 1, {{1, 0, 1, 1}}},
      {{1, 1}, 4, 2, {}},
  };
  for (const auto& c : cases) {
    EXPECT_EQ(shard_pieces(c.numels, c.world, c.rank), c.want) << "world " << c.world << " rank " << c.rank;
  }
  EXPECT_EQ(padded_numel(7, 4), 8);
  EXPECT_EQ(padded_numel(8, 4), 8);
  EXPECT_THROW(shard_pieces({4}, 2, 2), Error);
}

TEST(Buckets, ShardPiecesCoverEveryElementOnce) {
  const std::vector<int64_t> numels = {5, 1, 17, 3, 64, 2};
  for (int world : {1, 2, 3, 4, 7, 8, 100}) {
    std::vector<int> covered(92, 0);
    for (int rank = 0; rank < world; ++rank) {
      for (const auto& piece : shard_pieces(numels, world, rank)) {
        int64_t start = 0;
        for (size_t i = 0; i < piece.tensor; ++i) start += numels[i];
        EXPECT_EQ(start + piece.offset_in_tensor, piece.offset_in_bucket);
        EXPECT_LE(piece.offset_in_tensor + piece.numel, numels[piece.tensor]);
        for (int64_t e = 0; e < piece.numel; ++e) ++covered[piece.offset_in_bucket + e];
      }
    }
    for (int count : covered) ASSERT_EQ(count, 1) << "world " << world;
  }
}

TEST(Buckets, RejectsNonPositiveCaps) {
  EXPECT_THROW(assign_buckets({1, 2}, 0, 10), UsageError);
  EXPECT_THROW(assign_buckets({1, 2}, 10, -1), UsageError);
}

}  // namespace
}  // namespace dtrain
