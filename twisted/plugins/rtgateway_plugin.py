from twisted.application.service import ServiceMaker

rtgateway = ServiceMaker(
    "rtgateway", "gateway.tap", "Real-time gateway for multiplayer games", "rtgateway"
)
