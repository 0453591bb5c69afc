// The run's JSON files in --out-dir: metrics.jsonl (one JSON object per
// event, appended), config.json and summary.json, written by rank 0 only.
// What goes in them, and the lines printed beside them, is run/report.h's.
#pragma once
#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

namespace dtrain {

class MetricsLog {
 public:
  // Disabled logs (ranks other than 0) accept records and drop them.
  // `keep_bytes` < 0 starts metrics.jsonl afresh; otherwise its first
  // `keep_bytes` bytes are kept (a resumed run: the records up to its
  // checkpoint) and new records are appended.
  MetricsLog(const std::string& out_dir, bool enabled, int64_t keep_bytes = -1);

  void record(const nlohmann::json& event);
  void write_json(const std::string& file_name, const nlohmann::json& value) const;
  bool enabled() const { return enabled_; }
  // Bytes in metrics.jsonl so far (0 when disabled).
  int64_t bytes_written() const { return bytes_; }
  // Set when a resume could not keep the earlier records (another --out-dir).
  const std::string& note() const { return note_; }

 private:
  std::string out_dir_;
  bool enabled_;
  std::ofstream events_;
  std::string note_;
  int64_t bytes_ = 0;
};

// "1:05:03" / "4:07"
std::string format_duration(double seconds);

}  // namespace dtrain
