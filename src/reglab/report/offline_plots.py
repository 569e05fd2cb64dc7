"""An HTML template for ``dvc plots show`` that renders without a network.

DVC's default page loads Vega, Vega-Lite and Vega-Embed from a CDN, so on a
machine without internet it is blank. This template inlines the three
libraries, bundled by vl-convert (the Vega project's own converter, which
Altair uses for its offline HTML), and has no ``{scripts}`` placeholder, so DVC
adds no CDN tags::

    reglab plots-template .reglab/plots-template.html
    dvc plots show --html-template .reglab/plots-template.html

(``make plots`` does both.) DVC's plot specs are Vega-Lite 5, hence the version.
"""

from __future__ import annotations

VEGA_LITE_VERSION = "5.21"

PAGE = """<!DOCTYPE html>
<html>
<head>
  {refresh_tag}
  <meta charset="utf-8">
  <title>reglab: DVC plots</title>
  <!-- Vega {vega}, Vega-Lite {vega_lite}, Vega-Embed {vega_embed}, inlined: no network needed -->
  <script type="text/javascript">
(function () {{
{bundle}
}})();
  </script>
  <style>
    table {{ border-spacing: 15px; }}
  </style>
</head>
<body>
  {plot_divs}
</body>
</html>
"""


def template(vega_lite_version: str = VEGA_LITE_VERSION) -> str:
    """The page, with the placeholders DVC fills (``{plot_divs}``, ``{refresh_tag}``)."""
    import vl_convert

    # A classic script in a function scope: DVC's inline ``var spec`` and
    # ``vegaEmbed(...)`` run as the page parses, after this has set window.vegaEmbed.
    bundle = vl_convert.javascript_bundle(vl_version=vega_lite_version)
    return PAGE.format(
        bundle=bundle,
        vega=vl_convert.get_vega_version(),
        vega_lite=vega_lite_version,
        vega_embed=vl_convert.get_vega_embed_version(),
        refresh_tag="{refresh_tag}",
        plot_divs="{plot_divs}",
    )
