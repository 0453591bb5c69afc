// What a run records: metrics.jsonl (one JSON object per event), config.json
// and summary.json in --out-dir, written by rank 0 only; and a progress line
// on stderr every --log-every steps.
#pragma once
#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

namespace dtrain {

class MetricsLog {
 public:
  // Disabled logs (ranks other than 0) accept records and drop them.
  MetricsLog(const std::string& out_dir, bool enabled);

  void record(const nlohmann::json& event);
  void write_json(const std::string& file_name, const nlohmann::json& value) const;
  bool enabled() const { return enabled_; }

 private:
  std::string out_dir_;
  bool enabled_;
  std::ofstream events_;
};

// "1:05:03" / "4:07"
std::string format_duration(double seconds);

}  // namespace dtrain
