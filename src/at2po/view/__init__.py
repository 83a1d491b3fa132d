"""``at2po view``: an offline HTML report of runs' turn trees and curves.

:mod:`~at2po.view.data` reads run directories, :mod:`~at2po.view.page` renders the page (its
script ``report.js`` and style ``report.css`` are inlined), :mod:`~at2po.view.serve` serves it
on 127.0.0.1.
"""
