"""The website's routes, one module per concern (search, clips, admin, site); `nels.web.app` assembles them."""
