// time_series_svg(): well-formed, escaped, one polyline per series with
// values, gaps skipped, and it never throws on odd input.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "moe_eplb/plan/svg.hpp"

namespace moe_eplb {
namespace {

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t found = 0;
  for (std::size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) {
    ++found;
  }
  return found;
}

TEST(TimeSeriesSvg, OneLinePerSeriesAndOneMarkerPerValue) {
  const double gap = std::nan("");
  const std::string svg = time_series_svg(
      "Replay <test> & more", "window", {1, 2, 3, 4},
      {{"max/mean", {{"never", {1.3, 1.4, 1.35, 1.5}}, {"a & b", {1.1, 1.05}}}},
       {"slots changed", {{"never", {gap, gap, gap, gap}}, {"a & b", {0, gap, 12, gap}}}}});
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>\n"), std::string::npos);
  EXPECT_NE(svg.find("Replay &lt;test&gt; &amp; more"), std::string::npos);
  EXPECT_EQ(svg.find("a & b"), std::string::npos) << "labels must be escaped";
  // Lines: 2 in the first panel, 1 in the second (the all-NaN series has none).
  EXPECT_EQ(count(svg, "<polyline"), 3u);
  // Markers: 4 + 2 values in the first panel (the short series is padded), 2 in the second.
  EXPECT_EQ(count(svg, "<circle"), 8u);
  EXPECT_EQ(count(svg, "</title></circle>"), 8u);
}

// Guards against NaN coordinates or a division by zero on degenerate input.
TEST(TimeSeriesSvg, DegenerateInputsStillDraw) {
  for (const std::string& svg :
       {time_series_svg("", "", {}, {}), time_series_svg("flat", "x", {5}, {{"p", {{"s", {2.0}}}}}),
        time_series_svg("zeros", "x", {1, 2}, {{"p", {{"s", {0.0, 0.0}}}}})}) {
    EXPECT_NE(svg.find("</svg>"), std::string::npos);
    EXPECT_EQ(svg.find("nan"), std::string::npos) << svg;
    EXPECT_EQ(svg.find("inf"), std::string::npos) << svg;
  }
}

}  // namespace
}  // namespace moe_eplb
