#include "data/batch_plan.h"

#include "common/error.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace dtrain {
namespace {

struct PlanCase {
  int64_t micro, accum, global, world;          // given (0 = not given)
  int64_t want_micro, want_accum, want_global;  // derived
};

TEST(BatchPlan, DerivesTheMissingSize) {
  const PlanCase cases[] = {
      {64, 16, 0, 4, 64, 16, 4096},   // micro x accum -> global
      {64, 0, 4096, 4, 64, 16, 4096}, // micro, global -> accum
      {0, 16, 4096, 4, 64, 16, 4096}, // accum, global -> micro
      {64, 16, 4096, 4, 64, 16, 4096},// all three, consistent
      {32, 0, 0, 1, 32, 1, 32},       // micro alone: accum 1
      {0, 0, 256, 2, 128, 1, 256},    // global alone: accum 1
      {8, 4, 0, 1, 8, 4, 32},
      {2, 4, 0, 4, 2, 4, 32},
      {1, 1, 0, 8, 1, 1, 8},
  };
  for (const auto& c : cases) {
    const BatchPlan plan = derive_batch_plan(c.micro, c.accum, c.global, c.world);
    EXPECT_EQ(plan.micro_batch_size, c.want_micro) << c.micro << "," << c.accum << "," << c.global;
    EXPECT_EQ(plan.grad_accum_steps, c.want_accum) << c.micro << "," << c.accum << "," << c.global;
    EXPECT_EQ(plan.global_batch_size, c.want_global) << c.micro << "," << c.accum << "," << c.global;
    EXPECT_EQ(plan.world_size, c.world);
    EXPECT_EQ(plan.global_batch_size, plan.micro_batch_size * plan.grad_accum_steps * plan.world_size);
  }
}

TEST(BatchPlan, DescribesItselfInOneLine) {
  EXPECT_EQ(derive_batch_plan(64, 16, 0, 4).describe(), "global batch 4096 = micro 64 x accum 16 x world 4");
}

struct ErrorCase {
  int64_t micro, accum, global, world;
  const char* must_mention;
};

TEST(BatchPlan, RejectsBadCombinationsWithAUsefulMessage) {
  const ErrorCase cases[] = {
      {64, 16, 4000, 4, "!= micro 64 x accum 16 x world 4 = 4096"},
      {64, 0, 1000, 4, "nearest valid global batches: 768 or 1024"},
      {0, 3, 1000, 4, "accum 3 x world 4 = 12"},
      {0, 0, 7, 2, "nearest valid global batches: 6 or 8"},
      {0, 0, 1, 2, "nearest valid global batches: 2"},
      {0, 4, 0, 2, "no batch size given"},
      {0, 0, 0, 2, "no batch size given"},
      {-1, 0, 0, 2, "must be positive"},
      {8, -2, 0, 2, "must be positive"},
      {8, 1, 0, 0, "world size must be positive"},
      {int64_t{1} << 62, 4, 0, 2, "overflows"},
  };
  for (const auto& c : cases) {
    try {
      derive_batch_plan(c.micro, c.accum, c.global, c.world);
      ADD_FAILURE() << "no error for " << c.micro << "," << c.accum << "," << c.global << "," << c.world;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(c.must_mention), std::string::npos)
          << "message: " << e.what() << "\nshould mention: " << c.must_mention;
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << "one line only";
    }
  }
}

TEST(BatchPlan, WithMicroBatchKeepsTheGlobalBatch) {
  const BatchPlan plan = derive_batch_plan(64, 4, 0, 2);  // 512 = 64 x 4 x 2
  for (int64_t micro : {1, 2, 8, 32, 64, 256}) {
    const BatchPlan narrowed = plan.with_micro_batch(micro);
    EXPECT_EQ(narrowed.micro_batch_size, micro);
    EXPECT_EQ(narrowed.grad_accum_steps, 256 / micro);
    EXPECT_EQ(narrowed.world_size, 2);
    EXPECT_EQ(narrowed.global_batch_size, 512);
    EXPECT_EQ(narrowed.micro_batch_size * narrowed.grad_accum_steps * narrowed.world_size, 512);
  }
  nlohmann::json fields = {{"other", 1}};
  plan.add_to(fields);
  EXPECT_EQ(fields, nlohmann::json({{"other", 1}, {"micro_batch_size", 64}, {"grad_accum_steps", 4},
                                    {"world_size", 2}, {"global_batch_size", 512}}));
}

}  // namespace
}  // namespace dtrain
