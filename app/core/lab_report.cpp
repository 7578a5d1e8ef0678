#include "app/core/lab_report.h"

#include <cairo.h>
#include <librsvg/rsvg.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <set>

#include <fmt/format.h>

#include "app/core/atomic_file.h"
#include "kv/policy.h"

namespace kvscope {

using nlohmann::json;

namespace {

std::string escape(std::string_view s) {
  std::string out;
  for (char c : s) switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  return out;
}

// The palette: one colour per policy (the storage alone is dark grey), one
// marker per storage.
const char* policy_colour_of(std::string_view policy) {
  static const std::map<std::string_view, const char*> colours = {
      {"", "#444444"},          {"h2o", "#1f77b4"},    {"snapkv", "#d62728"}, {"tova", "#2ca02c"},
      {"streamingllm", "#9467bd"}, {"window", "#8c564b"}, {"pyramidkv", "#e377c2"}, {"full", "#444444"}};
  const auto it = colours.find(policy);
  return it != colours.end() ? it->second : "#ff7f0e";
}

std::string policy_name_of(const CacheSpec& spec) {
  const std::string& text = !spec.policy.empty() ? spec.policy : spec.on_full;
  if (text.empty()) return "";
  return kv::parse_policy_spec(text).name;
}

enum class Marker { Circle, Square, Triangle, Diamond, Cross };
Marker storage_marker(const CacheSpec& spec) {
  switch (spec.k_format) {
    case kv::Format::F16: return spec.v_format == kv::Format::F16 ? Marker::Circle : Marker::Cross;
    case kv::Format::Q8: return Marker::Square;
    case kv::Format::Q4: return Marker::Triangle;
    case kv::Format::Kivi2: return Marker::Diamond;
    default: return Marker::Cross;
  }
}

std::string marker_svg(Marker m, double x, double y, double r, const char* fill, const std::string& extra) {
  switch (m) {
    case Marker::Circle: return fmt::format(R"~(<circle cx="{:.1f}" cy="{:.1f}" r="{:.1f}" fill="{}" {}/>)~", x, y, r, fill, extra);
    case Marker::Square:
      return fmt::format(R"~(<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="{}" {}/>)~", x - r * 0.9,
                         y - r * 0.9, r * 1.8, r * 1.8, fill, extra);
    case Marker::Triangle:
      return fmt::format(R"~(<polygon points="{:.1f},{:.1f} {:.1f},{:.1f} {:.1f},{:.1f}" fill="{}" {}/>)~", x, y - r * 1.15,
                         x - r, y + r * 0.75, x + r, y + r * 0.75, fill, extra);
    case Marker::Diamond:
      return fmt::format(R"~(<polygon points="{:.1f},{:.1f} {:.1f},{:.1f} {:.1f},{:.1f} {:.1f},{:.1f}" fill="{}" {}/>)~", x,
                         y - r * 1.2, x + r, y, x, y + r * 1.2, x - r, y, fill, extra);
    case Marker::Cross:
      return fmt::format(
          R"~(<path d="M{:.1f},{:.1f} L{:.1f},{:.1f} M{:.1f},{:.1f} L{:.1f},{:.1f}" stroke="{}" stroke-width="2.5" {}/>)~",
          x - r, y - r, x + r, y + r, x - r, y + r, x + r, y - r, fill, extra);
  }
  return "";
}

std::string tick_text(double v, bool log, bool percent) {
  if (percent) return fmt::format("{:g}%", std::round(v * 1000) / 10);
  if (log) {
    const double e = std::log10(v);
    if (std::abs(e - std::round(e)) < 1e-9 && (e < -2 || e > 4)) return fmt::format("1e{}", int(std::round(e)));
    return fmt::format("{:g}", v);
  }
  return fmt::format("{:g}", v);
}

// A rectangle a label would take, for placing labels without overlaps.
struct Box {
  double x0, y0, x1, y1;
  bool hits(const Box& o) const { return x0 < o.x1 && o.x0 < x1 && y0 < o.y1 && o.y0 < y1; }
};
// DejaVu Sans averages about 0.6 em per character (bold a little more);
// "·" is two bytes of UTF-8 but one narrow glyph.
double text_width(std::string_view s, double size) {
  double chars = 0;
  for (unsigned char c : s) chars += (c & 0xC0) == 0x80 ? 0 : 1;
  return 0.62 * size * chars;
}

struct Frame {
  double w = 960, h = 600;
  double left = 86, right = 24, top = 56, bottom = 74;
};

std::string svg_open(const Frame& f, std::string_view title, std::string_view subtitle) {
  return fmt::format(
      R"~(<svg xmlns="http://www.w3.org/2000/svg" width="{0:.0f}" height="{1:.0f}" viewBox="0 0 {0:.0f} {1:.0f}" font-family="DejaVu Sans, Verdana, sans-serif">)~"
      "\n"
      R"~(<rect width="100%" height="100%" fill="#ffffff"/>)~"
      "\n"
      R"~(<text x="{2:.0f}" y="24" font-size="17" font-weight="bold" fill="#222">{3}</text>)~"
      "\n"
      R"~(<text x="{2:.0f}" y="43" font-size="12" fill="#555">{4}</text>)~"
      "\n",
      f.w, f.h, f.left, escape(title), escape(subtitle));
}

std::string axes_svg(const Frame& f, const LabAxis& x, const LabAxis& y, std::string_view x_name, std::string_view y_name,
                     bool y_percent) {
  std::string s;
  const double x0 = f.left, x1 = f.w - f.right, y0 = f.top, y1 = f.h - f.bottom;
  s += fmt::format(R"~(<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="none" stroke="#999"/>)~" "\n", x0, y0,
                   x1 - x0, y1 - y0);
  for (double v : x.ticks()) {
    const double px = x.map(v);
    s += fmt::format(R"~(<line x1="{0:.1f}" y1="{1:.1f}" x2="{0:.1f}" y2="{2:.1f}" stroke="#eee"/>)~" "\n", px, y0, y1);
    s += fmt::format(R"~(<text x="{:.1f}" y="{:.1f}" font-size="12" text-anchor="middle" fill="#333">{}</text>)~" "\n", px,
                     y1 + 17, tick_text(v, x.log, false));
  }
  for (double v : y.ticks()) {
    const double py = y.map(v);
    s += fmt::format(R"~(<line x1="{1:.1f}" y1="{0:.1f}" x2="{2:.1f}" y2="{0:.1f}" stroke="#eee"/>)~" "\n", py, x0, x1);
    s += fmt::format(R"~(<text x="{:.1f}" y="{:.1f}" font-size="12" text-anchor="end" fill="#333">{}</text>)~" "\n", x0 - 6,
                     py + 4, tick_text(v, y.log, y_percent));
  }
  s += fmt::format(R"~(<text x="{:.1f}" y="{:.1f}" font-size="13" text-anchor="middle" fill="#222">{}</text>)~" "\n",
                   (x0 + x1) / 2, f.h - 30, escape(x_name));
  s += fmt::format(
      R"~(<text transform="translate(18,{:.1f}) rotate(-90)" font-size="13" text-anchor="middle" fill="#222">{}</text>)~" "\n",
      (y0 + y1) / 2, escape(y_name));
  return s;
}

std::vector<size_t> by_bytes(const std::vector<LabRow>& rows) {
  std::vector<size_t> order(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return rows[a].eval.run.held_bytes_per_token < rows[b].eval.run.held_bytes_per_token;
  });
  return order;
}

std::optional<size_t> recommended(const LabReportInput& in) {
  return in.recommendation ? in.recommendation->pick : std::nullopt;
}

// The legend under a scatter: colours (policies present) and markers
// (storages present).
std::string legend_svg(const Frame& f, const std::vector<LabRow>& rows) {
  std::vector<std::string> policies;
  std::vector<std::pair<std::string, Marker>> storages;
  for (const LabRow& r : rows) {
    const std::string p = lab_policy_name(r.eval.run.spec);
    if (std::find(policies.begin(), policies.end(), p) == policies.end()) policies.push_back(p);
    const std::string st = r.eval.run.spec.name();
    if (std::none_of(storages.begin(), storages.end(), [&](const auto& s) { return s.first == st; }))
      storages.emplace_back(st, storage_marker(r.eval.run.spec));
  }
  std::string s;
  double x = f.left;
  const double y = f.h - 10;
  for (const std::string& p : policies) {
    s += fmt::format(R"~(<rect x="{:.1f}" y="{:.1f}" width="10" height="10" fill="{}"/>)~", x, y - 9, lab_policy_colour(p));
    const std::string name = p.empty() ? "no eviction" : p;
    s += fmt::format(R"~(<text x="{:.1f}" y="{:.1f}" font-size="11" fill="#333">{}</text>)~", x + 14, y, escape(name));
    x += 22 + text_width(name, 11);
  }
  x += 14;
  for (const auto& [name, m] : storages) {
    s += marker_svg(m, x + 5, y - 4, 5, "#666", "");
    s += fmt::format(R"~(<text x="{:.1f}" y="{:.1f}" font-size="11" fill="#333">{}</text>)~", x + 14, y, escape(name));
    x += 22 + text_width(name, 11);
  }
  return s + "\n";
}

// A scatter of every row against held bytes per token, front joined,
// every point labelled where a label fits (else its row number, as in the
// table).
std::string scatter(const LabReportInput& in, bool top1) {
  const std::vector<LabRow>& rows = in.rows;
  Frame f;
  const std::string title = top1 ? "Top-1 agreement with the full cache against memory"
                                 : "Divergence from the full cache against memory";
  const std::string subtitle = fmt::format(
      "{} caches over {} ({} chunks of {} tokens); baseline {}: {:.0f} bytes per token. Pareto front joined; "
      "up and left is better",
      rows.size(), in.identity.text, in.identity.n_chunks, in.identity.n_ctx, in.identity.baseline,
      in.baseline.bytes_per_token);
  std::string s = svg_open(f, title, top1 ? subtitle : std::string(subtitle).replace(subtitle.find("up and left"), 11,
                                                                                        "down and left"));
  LabScatterAxes axes = lab_scatter_axes(
      rows, in.baseline.bytes_per_token,
      in.recommendation ? std::optional<double>(in.recommendation->budget_bytes_per_token) : std::nullopt, top1);
  LabAxis& x = axes.x;
  LabAxis& y = axes.y;
  x.a = f.left + 12;
  x.b = f.w - f.right - 12;
  y.a = f.h - f.bottom - 12;
  y.b = f.top + 12;
  s += axes_svg(f, x, y, "KV cache memory held, bytes per token of context" + std::string(x.log ? " (log scale)" : ""),
                top1 ? "top-1 agreement with the full cache" : "mean KL(full ‖ cache), nats (log scale)", top1);
  auto px = [&](const LabRow& r) { return x.map(r.eval.run.held_bytes_per_token); };
  auto py = [&](const LabRow& r) {
    if (top1) return y.map(r.eval.divergence.top1_agreement);
    return y.map(r.eval.divergence.kl_mean > 0 ? r.eval.divergence.kl_mean : y.lo);
  };
  if (!top1)
    s += fmt::format(R"~(<text x="{:.1f}" y="{:.1f}" font-size="10" fill="#777">KL 0 drawn on the bottom line</text>)~" "\n",
                     f.left + 6, f.h - f.bottom - 4);
  // The budget, when one was given.
  if (in.recommendation) {
    const double bx = x.map(in.recommendation->budget_bytes_per_token);
    s += fmt::format(
        R"~(<line x1="{0:.1f}" y1="{1:.1f}" x2="{0:.1f}" y2="{2:.1f}" stroke="#e69500" stroke-width="2" stroke-dasharray="6,4"/>)~"
        "\n"
        R"~(<text x="{3:.1f}" y="{4:.1f}" font-size="12" fill="#b37400">budget {5}</text>)~"
        "\n",
        bx, f.top, f.h - f.bottom, bx + 5, f.top + 14, escape(in.budget ? in.budget->text : ""));
  }
  // The front.
  const std::vector<size_t> front = pareto_front(rows, top1);
  const std::set<size_t> on_front(front.begin(), front.end());
  std::string path;
  for (size_t i : front) path += fmt::format("{}{:.1f},{:.1f}", path.empty() ? "M" : " L", px(rows[i]), py(rows[i]));
  if (!path.empty())
    s += fmt::format(R"~(<path d="{}" fill="none" stroke="#222" stroke-width="1.5" stroke-dasharray="4,3"/>)~" "\n", path);

  // Points: non-front first, so the front draws on top.
  std::vector<size_t> order = by_bytes(rows);
  std::stable_partition(order.begin(), order.end(), [&](size_t i) { return !on_front.count(i); });
  const std::optional<size_t> pick = recommended(in);
  for (size_t i : order) {
    const LabRow& r = rows[i];
    const bool front_point = on_front.count(i) != 0;
    const std::string tip = fmt::format(
        "#{} {}&#10;{:.0f} bytes/token, mean KL {:.3g}, top-1 {:.2f}%", i + 1, escape(r.label()),
        r.eval.run.held_bytes_per_token, r.eval.divergence.kl_mean, 100 * r.eval.divergence.top1_agreement);
    s += "<g><title>" + tip + "</title>";
    s += marker_svg(storage_marker(r.eval.run.spec), px(r), py(r), front_point ? 6.5 : 5,
                    lab_policy_colour(lab_policy_name(r.eval.run.spec)),
                    front_point ? R"~(stroke="#000" stroke-width="1.2")~" : R"~(fill-opacity="0.75")~");
    s += "</g>\n";
    if (pick && *pick == i)
      s += fmt::format(R"~(<circle cx="{:.1f}" cy="{:.1f}" r="12" fill="none" stroke="#e69500" stroke-width="3"/>)~" "\n",
                       px(r), py(r));
  }
  // Labels: front first (they matter most), then the rest by bytes; each at
  // the first of eight places around its point that overlaps nothing placed.
  std::vector<Box> taken;
  for (const LabRow& r : rows) taken.push_back({px(r) - 6, py(r) - 6, px(r) + 6, py(r) + 6});
  std::vector<size_t> label_order = front;
  for (size_t i : by_bytes(rows))
    if (!on_front.count(i)) label_order.push_back(i);
  const Box plot{f.left, f.top, f.w - f.right, f.h - f.bottom};
  for (size_t i : label_order) {
    const LabRow& r = rows[i];
    const bool front_point = on_front.count(i) != 0;
    const double size = front_point ? 12 : 10.5;
    bool placed = false;
    for (const std::string& text : {lab_short_label(r.eval.run.spec), fmt::format("{}", i + 1)}) {
      const double w = text_width(text, size), h = size;
      const double cx = px(r), cy = py(r);
      const std::array<std::pair<double, double>, 8> spots = {{{9, h / 2 - 1},
                                                              {-9 - w, h / 2 - 1},
                                                              {-w / 2, -9},
                                                              {-w / 2, h + 8},
                                                              {9, -5},
                                                              {9, h + 4},
                                                              {-9 - w, -5},
                                                              {-9 - w, h + 4}}};
      for (const auto& [dx, dy] : spots) {
        const Box b{cx + dx, cy + dy - h, cx + dx + w, cy + dy + 2};
        if (b.x0 < plot.x0 || b.x1 > plot.x1 || b.y0 < plot.y0 || b.y1 > plot.y1) continue;
        if (std::any_of(taken.begin(), taken.end(), [&](const Box& t) { return t.hits(b); })) continue;
        taken.push_back(b);
        s += fmt::format(
            R"~(<text x="{:.1f}" y="{:.1f}" font-size="{}" fill="{}" stroke="#fff" stroke-width="3" paint-order="stroke"{}>{}</text>)~"
            "\n",
            b.x0, cy + dy, size, front_point ? "#111" : "#555", front_point ? R"~( font-weight="bold")~" : "",
            escape(text));
        placed = true;
        break;
      }
      if (placed) break;
    }
  }
  s += legend_svg(f, rows);
  return s + "</svg>\n";
}

std::string verdict_colour(Verdict v) {
  switch (v) {
    case Verdict::Retained: return "#4caf50";
    case Verdict::Degraded: return "#ffb300";
    case Verdict::Lost: return "#e53935";
  }
  return "#999";
}

std::string pct(double v) { return fmt::format("{:.2f}%", 100 * v); }
std::string sci(double v) { return v == 0 ? "0" : fmt::format("{:.2e}", v); }

}  // namespace

double LabAxis::map(double v) const {
  const double t = log ? (std::log10(std::max(v, lo)) - std::log10(lo)) / (std::log10(hi) - std::log10(lo))
                       : (v - lo) / (hi - lo);
  return a + std::clamp(t, -0.02, 1.02) * (b - a);
}

std::vector<double> LabAxis::ticks() const {
  std::vector<double> out;
  if (log) {
    const int d0 = int(std::floor(std::log10(lo))), d1 = int(std::ceil(std::log10(hi)));
    const bool minor = d1 - d0 <= 2;
    for (int d = d0; d <= d1; ++d)
      for (double m : minor ? std::vector<double>{1, 2, 5} : std::vector<double>{1}) {
        const double v = m * std::pow(10.0, d);
        if (v >= lo * 0.999 && v <= hi * 1.001) out.push_back(v);
      }
    return out;
  }
  const double raw = (hi - lo) / 6;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-6; v += step) out.push_back(v);
  return out;
}

LabScatterAxes lab_scatter_axes(const std::vector<LabRow>& rows, double baseline_bytes_per_token,
                                std::optional<double> budget_bytes_per_token, bool top1) {
  double bx0 = baseline_bytes_per_token > 0 ? baseline_bytes_per_token : INFINITY;
  double bx1 = baseline_bytes_per_token;
  double kl_min = INFINITY, kl_max = 0, t_min = 1;
  for (const LabRow& r : rows) {
    bx0 = std::min(bx0, r.eval.run.held_bytes_per_token);
    bx1 = std::max(bx1, r.eval.run.held_bytes_per_token);
    if (r.eval.divergence.kl_mean > 0) kl_min = std::min(kl_min, r.eval.divergence.kl_mean);
    kl_max = std::max(kl_max, r.eval.divergence.kl_mean);
    t_min = std::min(t_min, r.eval.divergence.top1_agreement);
  }
  if (budget_bytes_per_token) {
    bx0 = std::min(bx0, *budget_bytes_per_token);
    bx1 = std::max(bx1, *budget_bytes_per_token);
  }
  if (!std::isfinite(bx0)) bx0 = 1;
  bx0 = std::max(bx0, 1.0);
  bx1 = std::max(bx1, bx0 * 2);
  LabScatterAxes out;
  LabAxis& x = out.x;
  // Log scales where the data span a decade or more.
  x.log = bx1 / bx0 > 8;
  x.lo = x.log ? std::pow(10.0, std::floor(std::log10(bx0) * 4) / 4) : 0;
  x.hi = x.log ? std::pow(10.0, std::ceil(std::log10(bx1 * 1.05) * 4) / 4) : bx1 * 1.1;
  LabAxis& y = out.y;
  if (top1) {
    y.lo = std::max(0.0, std::floor((t_min - 0.02) * 50) / 50);
    y.hi = 1.0;
  } else {
    if (!std::isfinite(kl_min)) kl_min = 1e-6;
    y.log = true;
    y.lo = std::pow(10.0, std::floor(std::log10(kl_min)));
    y.hi = std::pow(10.0, std::ceil(std::log10(std::max(kl_max, kl_min * 10))));
  }
  return out;
}

const char* lab_policy_colour(std::string_view policy) { return policy_colour_of(policy); }
std::string lab_policy_name(const CacheSpec& spec) { return policy_name_of(spec); }

std::string lab_short_label(const CacheSpec& spec) {
  std::string s = spec.name();
  const std::string& text = !spec.policy.empty() ? spec.policy : spec.on_full;
  if (!text.empty()) {
    const kv::PolicySpec p = kv::parse_policy_spec(text);
    s += "·" + p.name;
    const auto budget = p.values.find("budget");
    if (budget != p.values.end()) {
      s += fmt::format("@{:g}", budget->second);
    } else {
      const auto sinks = p.values.find("sinks"), window = p.values.find("window");
      if (window != p.values.end())
        s += fmt::format("@{:g}", window->second + (sinks != p.values.end() ? sinks->second : 0));
    }
  }
  if (!spec.pins.empty()) s += "·pins";
  if (spec.spill) s += "·spill";
  return s;
}

std::string lab_chart_kl(const LabReportInput& in) { return scatter(in, false); }
std::string lab_chart_top1(const LabReportInput& in) { return scatter(in, true); }

std::string lab_chart_lost_attention(const LabReportInput& in) {
  // One line per eviction policy (its text: the same policy on another
  // storage evicts the same tokens and loses almost the same attention):
  // the recommendation's first, then the policies of the KL front, then the
  // closest others, at most 6.
  struct Line {
    std::string policy;
    size_t row;  // the row drawn: the policy's first on the front (or closest)
    std::vector<std::string> storages;
  };
  std::vector<Line> lines;
  auto add = [&](size_t i) {
    const LabRow& r = in.rows[i];
    if (!r.evicting()) return;
    const std::string policy = r.eval.run.spec.policy.empty() ? r.eval.run.spec.on_full : r.eval.run.spec.policy;
    for (Line& l : lines)
      if (l.policy == policy) {
        if (std::find(l.storages.begin(), l.storages.end(), r.eval.run.spec.name()) == l.storages.end())
          l.storages.push_back(r.eval.run.spec.name());
        return;
      }
    if (lines.size() < 6) lines.push_back({policy, i, {r.eval.run.spec.name()}});
  };
  if (auto pick = recommended(in)) add(*pick);
  for (size_t i : pareto_front(in.rows)) add(i);
  std::vector<size_t> by_kl(in.rows.size());
  for (size_t i = 0; i < by_kl.size(); ++i) by_kl[i] = i;
  std::stable_sort(by_kl.begin(), by_kl.end(), [&](size_t a, size_t b) {
    return in.rows[a].eval.divergence.kl_mean < in.rows[b].eval.divergence.kl_mean;
  });
  for (size_t i : by_kl) add(i);
  std::vector<size_t> chosen;
  for (const Line& l : lines) chosen.push_back(l.row);
  Frame f;
  f.h = 460;
  std::string s = svg_open(f, "Lost attention per layer",
                           "the full cache's attention on tokens a cache no longer holds, mean over positions and heads; "
                           "a line per policy (its storages in brackets)");
  size_t n_layer = 0;
  double hi = 0;
  for (size_t i : chosen) {
    n_layer = std::max(n_layer, in.rows[i].eval.lost.per_layer.size());
    for (double v : in.rows[i].eval.lost.per_layer) hi = std::max(hi, v);
  }
  if (chosen.empty() || n_layer == 0) {
    s += fmt::format(R"~(<text x="{:.0f}" y="{:.0f}" font-size="14" fill="#555">No evicting cache on the front: nothing was lost to eviction.</text>)~",
                     f.left, f.h / 2);
    return s + "</svg>\n";
  }
  LabAxis x;
  x.lo = 0;
  x.hi = double(std::max<size_t>(n_layer, 2) - 1);
  x.a = f.left + 20;
  x.b = f.w - f.right - 265;
  LabAxis y;
  y.lo = 0;
  y.hi = std::max(hi * 1.1, 1e-3);
  y.a = f.h - f.bottom;
  y.b = f.top + 8;
  s += axes_svg(f, x, y, "layer", "lost attention (share of the full cache's)", false);
  static const char* colours[] = {"#e69500", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"};
  for (size_t k = 0; k < chosen.size(); ++k) {
    const LabRow& r = in.rows[chosen[k]];
    std::string path;
    for (size_t l = 0; l < r.eval.lost.per_layer.size(); ++l)
      path += fmt::format("{}{:.1f},{:.1f}", l ? " L" : "M", x.map(double(l)), y.map(r.eval.lost.per_layer[l]));
    s += fmt::format(R"~(<path d="{}" fill="none" stroke="{}" stroke-width="2.5"/>)~" "\n", path, colours[k]);
    for (size_t l = 0; l < r.eval.lost.per_layer.size(); ++l)
      s += fmt::format(R"~(<circle cx="{:.1f}" cy="{:.1f}" r="3.5" fill="{}"/>)~", x.map(double(l)),
                       y.map(r.eval.lost.per_layer[l]), colours[k]);
    const double ly = f.top + 20 + 20 * double(k);
    s += fmt::format(R"~(<line x1="{0:.1f}" y1="{1:.1f}" x2="{2:.1f}" y2="{1:.1f}" stroke="{3}" stroke-width="3"/>)~",
                     f.w - f.right - 245, ly - 4, f.w - f.right - 225, colours[k]);
    CacheSpec policy_only = r.eval.run.spec;
    policy_only.k_format = policy_only.v_format = kv::Format::F16;
    policy_only.group_size.reset();
    std::string label = lab_short_label(policy_only).substr(std::string("f16·").size());
    std::string storages;
    for (const std::string& st : lines[k].storages) storages += (storages.empty() ? "" : ", ") + st;
    label += " (" + storages + ")";
    s += fmt::format(R"~(<text x="{:.1f}" y="{:.1f}" font-size="12" fill="#222">{}</text>)~" "\n", f.w - f.right - 220, ly,
                     escape(label));
  }
  return s + "</svg>\n";
}

std::string lab_chart_probes(const LabReportInput& in) {
  std::vector<std::string> scenarios;
  for (const LabRow& r : in.rows)
    for (const LabProbe& p : r.probes)
      if (std::find(scenarios.begin(), scenarios.end(), p.scenario) == scenarios.end()) scenarios.push_back(p.scenario);
  if (scenarios.empty()) return "";
  const std::vector<size_t> order = by_bytes(in.rows);
  Frame f;
  f.left = 230;
  f.top = 150;
  const double cell_w = std::clamp(640.0 / double(scenarios.size()), 28.0, 64.0), cell_h = 18;
  f.w = f.left + cell_w * double(scenarios.size()) + 40;
  f.h = f.top + cell_h * double(order.size()) + 50;
  std::string s = svg_open(f, "Probe verdicts", "a fact early, its question late: retained / degraded / lost under each cache");
  for (size_t c = 0; c < scenarios.size(); ++c) {
    const double cx = f.left + cell_w * (double(c) + 0.5);
    s += fmt::format(
        R"~(<text transform="translate({:.1f},{:.1f}) rotate(-45)" font-size="11" fill="#222">{}</text>)~" "\n", cx,
        f.top - 6, escape(scenarios[c]));
  }
  for (size_t k = 0; k < order.size(); ++k) {
    const LabRow& r = in.rows[order[k]];
    const double y = f.top + cell_h * double(k);
    s += fmt::format(R"~(<text x="{:.1f}" y="{:.1f}" font-size="11" text-anchor="end" fill="#222">{}</text>)~" "\n",
                     f.left - 8, y + 13, escape(lab_short_label(r.eval.run.spec)));
    for (size_t c = 0; c < scenarios.size(); ++c) {
      const auto it = std::find_if(r.probes.begin(), r.probes.end(),
                                   [&](const LabProbe& p) { return p.scenario == scenarios[c]; });
      const std::string fill = it == r.probes.end() ? "#dddddd" : verdict_colour(it->verdict);
      const std::string tip = it == r.probes.end()
                                  ? "not run"
                                  : fmt::format("{}: {} (log p {:.2f}, full {:.2f})", scenarios[c],
                                                verdict_name(it->verdict), it->logprob, it->full_logprob);
      s += fmt::format(
          R"~(<rect x="{:.1f}" y="{:.1f}" width="{:.1f}" height="{:.1f}" fill="{}" stroke="#fff"><title>{}</title></rect>)~",
          f.left + cell_w * double(c), y, cell_w, cell_h, fill, escape(tip));
    }
    s += "\n";
  }
  double lx = f.left;
  const double ly = f.h - 18;
  for (Verdict v : {Verdict::Retained, Verdict::Degraded, Verdict::Lost}) {
    s += fmt::format(R"~(<rect x="{:.1f}" y="{:.1f}" width="12" height="12" fill="{}"/>)~", lx, ly - 10, verdict_colour(v));
    s += fmt::format(R"~(<text x="{:.1f}" y="{:.1f}" font-size="12" fill="#222">{}</text>)~", lx + 16, ly, verdict_name(v));
    lx += 100;
  }
  return s + "</svg>\n";
}

std::string lab_report_csv(const LabReportInput& in) {
  const std::set<size_t> front_kl = [&] {
    const auto f = pareto_front(in.rows);
    return std::set<size_t>(f.begin(), f.end());
  }();
  std::string s =
      "row,cache,held_bytes_per_token,bytes_per_token,share_of_baseline,kl_mean,kl_median,kl_p99,kl_max,"
      "top1_agreement,ppl,ppl_ratio,lost_attention_mean,evictions,probes_retained,probes_degraded,probes_lost,"
      "tok_s,seconds,on_kl_front\n";
  for (size_t i = 0; i < in.rows.size(); ++i) {
    const LabRow& r = in.rows[i];
    const Divergence& d = r.eval.divergence;
    std::string label = r.label();
    std::string quoted = "\"";
    for (char c : label) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
    quoted += "\"";
    s += fmt::format("{},{},{:.6g},{:.6g},{:.6g},{:.6g},{:.6g},{:.6g},{:.6g},{:.6g},{:.6g},{:.6g},{:.6g},{},{},{},{},{:.1f},"
                     "{:.1f},{}\n",
                     i + 1, quoted, r.eval.run.held_bytes_per_token, r.eval.run.bytes_per_token,
                     r.eval.run.held_bytes_per_token / in.baseline.bytes_per_token, d.kl_mean, d.kl_median, d.kl_p99,
                     d.kl_max, d.top1_agreement, r.eval.run.ppl, r.eval.ppl_ratio, r.eval.lost.mean,
                     r.eval.run.evictions, r.probes.size() - r.probes_lost() - r.probes_degraded(),
                     r.probes_degraded(), r.probes_lost(), r.eval.run.tok_s(), r.seconds,
                     front_kl.count(i) ? "yes" : "no");
  }
  return s;
}

json lab_report_json(const LabReportInput& in) {
  json rows = json::array();
  const auto kl_front = pareto_front(in.rows);
  const auto top1_front = pareto_front(in.rows, true);
  for (size_t i = 0; i < in.rows.size(); ++i) {
    json r = lab_row_json(in.rows[i]);
    r["label"] = in.rows[i].label();
    r["short_label"] = lab_short_label(in.rows[i].eval.run.spec);
    r["on_kl_front"] = std::find(kl_front.begin(), kl_front.end(), i) != kl_front.end();
    r["on_top1_front"] = std::find(top1_front.begin(), top1_front.end(), i) != top1_front.end();
    rows.push_back(std::move(r));
  }
  json out{{"sweep", in.identity.json()},
           {"baseline",
            {{"cache", in.baseline.spec.label()},
             {"ppl", in.baseline.ppl},
             {"ppl_stderr", in.baseline.ppl_stderr},
             {"bytes_per_token", in.baseline.bytes_per_token}}},
           {"rows", rows}};
  if (in.recommendation) {
    const LabRecommendation& rec = *in.recommendation;
    out["recommendation"] = {{"budget", in.budget ? in.budget->text : ""},
                             {"budget_bytes_per_token", rec.budget_bytes_per_token},
                             {"pick", rec.pick ? json(in.rows[*rec.pick].label()) : json(nullptr)},
                             {"safe", rec.safe},
                             {"shortfalls", rec.shortfalls},
                             {"smallest_safe", rec.safe_pick ? json(in.rows[*rec.safe_pick].label()) : json(nullptr)},
                             {"max_kl", in.safety.max_kl},
                             {"min_top1", in.safety.min_top1},
                             {"text", rec.text}};
  }
  return out;
}

std::string lab_report_html(const LabReportInput& in) {
  std::string s = R"~(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kvscope cache lab</title>
<style>
body { font-family: "DejaVu Sans", Verdana, sans-serif; margin: 24px auto; max-width: 1000px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 32px; }
.rec { border-left: 5px solid #e69500; background: #fff8e8; padding: 10px 14px; white-space: pre-wrap; }
.rec.safe { border-color: #4caf50; background: #effaf0; }
table { border-collapse: collapse; font-size: 12px; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 6px; text-align: right; }
th { background: #f4f4f4; } td { white-space: nowrap; } td.l, th.l { text-align: left; white-space: normal; }
tr.front td { font-weight: bold; } tr.pick td { background: #fff3d6; }
.meta { color: #555; font-size: 13px; } figure { margin: 12px 0; } svg { max-width: 100%; height: auto; }
</style></head><body>
<h1>Which KV cache for this text?</h1>
)~";
  const LabIdentity& id = in.identity;
  s += fmt::format(
      R"~(<p class="meta">Model <b>{}</b> · text <b>{}</b> ({} tokens, {} chunks of {} scored on their second half) · baseline <b>{}</b>, perplexity {:.4f}, {:.0f} bytes per token · {}</p>)~"
      "\n",
      escape(id.model), escape(id.text), id.n_tokens, id.n_chunks, id.n_ctx, escape(id.baseline), in.baseline.ppl,
      in.baseline.bytes_per_token, escape(id.device));
  if (!in.command.empty()) s += fmt::format("<p class=\"meta\"><code>{}</code></p>\n", escape(in.command));
  if (in.recommendation)
    s += fmt::format("<div class=\"rec{}\">{}</div>\n", in.recommendation->safe ? " safe" : "",
                     escape(in.recommendation->text));
  s += R"~(<p class="meta">Caches rank by how far their next-token distributions move from the full cache's (mean KL, nats) and how often they still pick the same top token, never by perplexity alone. Memory is what each cache holds per token of context: every scale and window of its format, times the share of entries its policy keeps.</p>)~"
       "\n";
  s += "<h2>Divergence against memory</h2>\n<figure>" + lab_chart_kl(in) + "</figure>\n";
  s += "<h2>Top-1 agreement against memory</h2>\n<figure>" + lab_chart_top1(in) + "</figure>\n";
  s += "<h2>Where the evicting caches lose attention</h2>\n<figure>" + lab_chart_lost_attention(in) + "</figure>\n";
  if (const std::string probes = lab_chart_probes(in); !probes.empty())
    s += "<h2>Probes</h2>\n<figure>" + probes + "</figure>\n";
  s += "<h2>Every cache</h2>\n<table><tr><th>#</th><th class=\"l\">cache</th><th>bytes/token</th><th>of baseline</th>"
       "<th>KL mean</th><th>KL p99</th><th>top-1</th><th>ppl</th><th>lost attn</th><th>probes R/D/L</th><th>tok/s</th>"
       "</tr>\n";
  const auto front = pareto_front(in.rows);
  const std::optional<size_t> pick = recommended(in);
  for (size_t i : by_bytes(in.rows)) {
    const LabRow& r = in.rows[i];
    const bool on_front = std::find(front.begin(), front.end(), i) != front.end();
    std::string cls = on_front ? "front" : "";
    if (pick && *pick == i) cls += " pick";
    s += fmt::format(
        "<tr class=\"{}\"><td>{}</td><td class=\"l\">{}{}</td><td>{:.0f}</td><td>{:.1f}%</td><td>{}</td><td>{}</td>"
        "<td>{}</td><td>{:.4f}</td><td>{}</td><td>{}</td><td>{:.0f}</td></tr>\n",
        cls, i + 1, escape(r.label()), on_front ? " ★" : "", r.eval.run.held_bytes_per_token,
        100 * r.eval.run.held_bytes_per_token / in.baseline.bytes_per_token, sci(r.eval.divergence.kl_mean),
        sci(r.eval.divergence.kl_p99), pct(r.eval.divergence.top1_agreement), r.eval.run.ppl,
        r.evicting() ? fmt::format("{:.4f}", r.eval.lost.mean) : "—",
        r.probes.empty() ? "—"
                         : fmt::format("{}/{}/{}", r.probes.size() - r.probes_lost() - r.probes_degraded(),
                                       r.probes_degraded(), r.probes_lost()),
        r.eval.run.tok_s());
  }
  s += "</table>\n<p class=\"meta\">★ on the Pareto front of mean KL against bytes per token. The same figures: "
       "results.csv, results.json; the sweep's journal: rows.jsonl.</p>\n</body></html>\n";
  return s;
}

void render_svg_png(const std::string& svg, const std::filesystem::path& png) {
  GError* error = nullptr;
  RsvgHandle* handle =
      rsvg_handle_new_from_data(reinterpret_cast<const guint8*>(svg.data()), svg.size(), &error);
  if (!handle) {
    const std::string why = error ? error->message : "unknown error";
    if (error) g_error_free(error);
    throw std::runtime_error(fmt::format("{}: the chart does not render ({})", png.string(), why));
  }
  gdouble w = 0, h = 0;
  if (!rsvg_handle_get_intrinsic_size_in_pixels(handle, &w, &h) || w < 1 || h < 1) {
    g_object_unref(handle);
    throw std::runtime_error(fmt::format("{}: the chart has no size", png.string()));
  }
  cairo_surface_t* surface = cairo_image_surface_create(CAIRO_FORMAT_ARGB32, int(std::ceil(w)), int(std::ceil(h)));
  cairo_t* cr = cairo_create(surface);
  const RsvgRectangle viewport{0, 0, w, h};
  const bool ok = rsvg_handle_render_document(handle, cr, &viewport, &error);
  cairo_destroy(cr);
  g_object_unref(handle);
  if (!ok) {
    const std::string why = error ? error->message : "unknown error";
    if (error) g_error_free(error);
    cairo_surface_destroy(surface);
    throw std::runtime_error(fmt::format("{}: the chart does not render ({})", png.string(), why));
  }
  // Written beside the target, then renamed over it: whole or not at all.
  const std::filesystem::path temp = png.string() + ".tmp";
  const cairo_status_t status = cairo_surface_write_to_png(surface, temp.c_str());
  cairo_surface_destroy(surface);
  std::error_code ec;
  if (status != CAIRO_STATUS_SUCCESS) {
    std::filesystem::remove(temp, ec);
    throw std::runtime_error(fmt::format("{}: cannot write it ({})", png.string(), cairo_status_to_string(status)));
  }
  std::filesystem::rename(temp, png, ec);
  if (ec) {
    std::filesystem::remove(temp, ec);
    throw std::runtime_error(fmt::format("{}: cannot write it ({})", png.string(), ec.message()));
  }
}

std::vector<std::filesystem::path> write_lab_report(const LabReportInput& in, const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  std::vector<std::filesystem::path> written;
  auto put = [&](const std::string& name, const std::string& text) {
    write_file_atomically(dir / name, text);
    written.push_back(dir / name);
  };
  auto chart = [&](const std::string& stem, const std::string& svg) {
    if (svg.empty()) return;
    put(stem + ".svg", svg);
    render_svg_png(svg, dir / (stem + ".png"));
    written.push_back(dir / (stem + ".png"));
  };
  put("report.html", lab_report_html(in));
  chart("kl-vs-bytes", lab_chart_kl(in));
  chart("top1-vs-bytes", lab_chart_top1(in));
  chart("lost-attention", lab_chart_lost_attention(in));
  chart("probes", lab_chart_probes(in));
  put("results.csv", lab_report_csv(in));
  put("results.json", lab_report_json(in).dump(2) + "\n");
  return written;
}

}  // namespace kvscope
