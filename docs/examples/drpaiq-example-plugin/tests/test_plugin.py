"""The plugin module: what it registers, and its plugin API check."""

from __future__ import annotations

import pytest
from drpaiq_example_plugin import plugin
from drpaiq_example_plugin.yolov5 import YoloV5PostprocessMatcher

from drpaiq_core import PLUGIN_API_VERSION


def test_the_host_finds_the_matcher_by_its_plugin_name(host) -> None:
    assert host.exclusion_matchers.get("yolov5_postprocess") is YoloV5PostprocessMatcher
    host.load_all()
    info = host.plugins["example"]
    assert info.distribution == "drpaiq-example-plugin"
    assert info.registers == {"exclusion matcher": ["yolov5_postprocess"]}


def test_the_installed_core_speaks_the_plugin_api_this_plugin_needs() -> None:
    plugin.check_api_version(PLUGIN_API_VERSION)
    plugin.check_api_version("1.9")


def test_another_major_plugin_api_is_refused_with_the_pin_to_install() -> None:
    with pytest.raises(ImportError, match=r"needs drpaiq plugin API 1\.x.*provides 2\.0"):
        plugin.check_api_version("2.0")
