// The cache lab's report: a self-contained HTML page (charts as inline SVG,
// no network), the charts as PNG files, and the same data as CSV and JSON.
//
//   DIR/report.html       the recommendation, the charts, the table
//   DIR/kl-vs-bytes.svg/.png       mean KL against held bytes per token, log-log, Pareto front marked
//   DIR/top1-vs-bytes.svg/.png     top-1 agreement against held bytes per token, front marked
//   DIR/lost-attention.svg/.png    lost attention per layer, the front's evicting caches
//   DIR/probes.svg/.png            probe verdicts, caches × scenarios (when the sweep ran probes)
//   DIR/results.csv, results.json  every row's figures
//
// The charts are drawn here once, as SVG text; the PNGs are that SVG
// rendered by librsvg, so the page and the pictures cannot disagree.
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "app/core/lab.h"

namespace kvscope {

struct LabReportInput {
  LabIdentity identity;
  PerplexityRun baseline;
  std::vector<LabRow> rows;
  std::optional<LabRecommendation> recommendation;
  std::optional<LabBudget> budget;
  LabSafety safety;
  std::string command;  // how it was made, shown on the page
};

// The scatter charts' scales, shared by the SVG and the window's Lab panel:
// log where the data span a decade or more, mapped onto pixels a..b.
struct LabAxis {
  double lo = 0, hi = 1;
  bool log = false;
  double a = 0, b = 1;  // pixels of lo and hi
  double map(double v) const;
  std::vector<double> ticks() const;  // decades (and 2, 5 between when few) on a log scale, a round step else
};
struct LabScatterAxes {
  LabAxis x, y;  // held bytes per token; mean KL (log) or top-1 agreement
};
LabScatterAxes lab_scatter_axes(const std::vector<LabRow>& rows, double baseline_bytes_per_token,
                                std::optional<double> budget_bytes_per_token, bool top1);
// The colour ("#rrggbb") of a policy's points ("" for none), and a cache's policy name.
const char* lab_policy_colour(std::string_view policy);
std::string lab_policy_name(const CacheSpec& spec);

// A short name for a point on a chart: "q4·h2o@64", "f16", "k=q8,v=f16·snapkv@128".
std::string lab_short_label(const CacheSpec& spec);

// The charts as SVG documents (exposed for the window's export and the tests).
std::string lab_chart_kl(const LabReportInput& in);
std::string lab_chart_top1(const LabReportInput& in);
std::string lab_chart_lost_attention(const LabReportInput& in);
std::string lab_chart_probes(const LabReportInput& in);  // empty when no row has probes

std::string lab_report_html(const LabReportInput& in);
std::string lab_report_csv(const LabReportInput& in);
nlohmann::json lab_report_json(const LabReportInput& in);

// Renders an SVG document to a PNG file (librsvg + cairo). Throws
// std::runtime_error naming the file.
void render_svg_png(const std::string& svg, const std::filesystem::path& png);

// Writes everything above into `dir` (each file atomically); returns the
// paths written.
std::vector<std::filesystem::path> write_lab_report(const LabReportInput& in, const std::filesystem::path& dir);

}  // namespace kvscope
