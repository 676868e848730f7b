"""The legacy pipeline's category classifier: keyword rules plus gazetteer-domain votes.

Every keyword found in the query (spaces removed) votes for its category with its weight;
every recognized entity votes for the categories of its gazetteer domain (a skincare brand
for 美妆>护肤). The category with the highest score wins; no evidence gives 其他.
"""
from __future__ import annotations

from typing import Iterable

#: Gazetteer (type, group) -> the categories an entity from it suggests.
DOMAIN_CATEGORIES: dict[tuple[str, str], tuple[str, ...]] = {}


def _domains(etype: str, spec: str) -> None:
    for item in spec.split():
        group, cats = item.split("=")
        DOMAIN_CATEGORIES[(etype, group)] = tuple(cats.split(","))


_domains("品牌", """skincare=美妆>护肤 makeup=美妆>彩妆 perfume=美妆>香水 apparel=时尚>穿搭 shoes=时尚>鞋包
    bags=时尚>鞋包 jewelry=时尚>配饰 drink=美食>饮品 restaurant=美食>探店 snack=美食>探店 phone=数码>手机
    computer=数码>电脑 audio=数码>影音 appliance=家居>家电 furniture=家居>装修,家居>收纳 baby=母婴>育儿,母婴>孕产
    sport=运动>户外,运动>健身 car=汽车>选购,汽车>用车 pet=宠物>猫,宠物>狗 game_company=游戏>手游 health=健康>养生
    edu=教育>考试,教育>语言 hotel=旅行>住宿 camera=数码>影音,生活>摄影 craft=生活>手工""")
_domains("产品", """skincare=美妆>护肤 makeup=美妆>彩妆 perfume=美妆>香水 shoes=时尚>鞋包 bags=时尚>鞋包
    phone=数码>手机 computer=数码>电脑 audio=数码>影音 appliance=家居>家电 car=汽车>选购 drink=美食>饮品
    console=游戏>主机 fitness=运动>健身,运动>户外""")
_domains("型号", """phone=数码>手机 computer=数码>电脑 car=汽车>选购,汽车>用车 shoes=时尚>鞋包 audio=数码>影音
    camera=数码>影音,生活>摄影 appliance=家居>家电 console=游戏>主机""")
_domains("品类", """skincare=美妆>护肤 makeup=美妆>彩妆 perfume=美妆>香水 clothes=时尚>穿搭 shoes=时尚>鞋包
    bags=时尚>鞋包 accessory=时尚>配饰 dish=美食>菜谱 restaurant_kind=美食>探店 drink=美食>饮品
    lodging=旅行>住宿 phone=数码>手机 computer=数码>电脑 audio=数码>影音 appliance=家居>家电 decor=家居>装修
    storage=家居>收纳 baby=母婴>育儿 maternity=母婴>孕产 fitness_gear=运动>健身 diet_food=运动>减脂
    outdoor_gear=运动>户外 exam=教育>考试 language=教育>语言 school=教育>升学 job_doc=职场>求职 job=职场>求职
    skill=职场>技能 car_kind=汽车>选购 car_part=汽车>用车 car_service=汽车>用车 driving_test=汽车>用车
    cat_supply=宠物>猫 cat_breed=宠物>猫 dog_supply=宠物>狗 dog_breed=宠物>狗 medicine=健康>医疗,健康>养生
    medical_service=健康>医疗 tonic=健康>养生 therapy=健康>养生 housing=生活>租房 photo_gear=生活>摄影
    craft=生活>手工""")
_domains("人物", """actor=娱乐>明星 singer=娱乐>音乐,娱乐>明星 model=娱乐>明星,时尚>穿搭 athlete=娱乐>明星
    author=其他 coach=运动>健身,运动>减脂""")
_domains("地点", "city_cn=旅行>国内 scenic_cn=旅行>国内 abroad=旅行>出境 district=美食>探店")
_domains("机构", """store=其他 school_cn=教育>升学 school_abroad=教育>升学 hospital=健康>医疗 company=职场>求职
    gym=运动>健身 venue=旅行>国内""")
_domains("作品", """drama=娱乐>影视 movie=娱乐>影视 anime=娱乐>影视 game_mobile=游戏>手游
    game_console=游戏>主机 song=娱乐>音乐 book=其他 variety=娱乐>影视""")
_domains("人群", """skin=美妆>护肤,美妆>彩妆 body=时尚>穿搭 kid=母婴>育儿 pet_owner=宠物>猫,宠物>狗
    health_cond=健康>养生,健康>医疗 pregnancy=母婴>孕产""")

#: Category -> keywords ("word" weighs 1.5, "word:w" weighs w), matched as substrings.
KEYWORDS: dict[str, tuple[tuple[str, float], ...]] = {}


def _keywords(spec: dict[str, str]) -> None:
    for cat, words in spec.items():
        items = []
        for w in words.split():
            text, _, weight = w.partition(":")
            items.append((text, float(weight) if weight else 1.5))
        KEYWORDS[cat] = tuple(items)


_keywords({
    "美妆>护肤": "护肤 肤质 保湿 美白 抗老 祛痘 痘痘 毛孔 精华 面霜 水乳 防晒 面膜 烂脸 敏感肌 刷酸 空瓶:1",
    "美妆>彩妆": "化妆 妆容 试色 色号 口红 粉底 眼影 腮红 遮瑕 持妆 底妆 画法 仿妆 唇釉",
    "美妆>香水": "香水 香味 留香 好闻 香调 香氛 前调 小样:1",
    "时尚>穿搭": "穿搭 搭配:1 显瘦 显高 ootd 私服 尺码:1 通勤:1 衣服 裙 裤 外套",
    "时尚>鞋包": "鞋 包包 背包 尺码偏 配色 上身:1 辨别真假 真假",
    "时尚>配饰": "耳环 项链 手链 戒指 饰品 叠戴 保值 首饰 发夹 手表",
    "美食>菜谱": "做法 食谱 菜谱 怎么做 家常 教程:0.5 零失败 材料:1 烤箱",
    "美食>探店": "探店 必吃 美食 餐厅 排队 人均 好吃的 吃法 本地人 小吃 隐藏吃法",
    "美食>饮品": "奶茶 咖啡 好喝 饮品 点单 甜度 拿铁 喝 茶饮 菜单",
    "旅行>国内": "攻略:1 旅游 旅行 自驾 景点 门票 citywalk 机位 穷游 路线:1 一日游",
    "旅行>出境": "签证 出境 自由行 退税 电话卡 出国 免税 汇率 护照",
    "旅行>住宿": "民宿 酒店 住宿 住哪 房型 青旅 入住 早餐:1",
    "数码>手机": "手机 续航:1 拍照效果 系统更新 发热 内存 iphone 安卓 5g",
    "数码>电脑": "电脑 笔记本 散热 显卡 cpu 游戏本 轻薄本 装软件 软件",
    "数码>影音": "耳机 降噪 相机 镜头 音箱 投影 vlog 音质 微单",
    "家居>装修": "装修 翻新 效果图 风格 瓷砖 地板 全屋 户型 硬装 软装",
    "家居>家电": "家电 扫地机 洗地机 冰箱 洗衣机 空调 吹风机 智商税 售后:1 空气炸锅",
    "家居>收纳": "收纳 整理 断舍离 置物 衣柜 宿舍:1",
    "母婴>育儿": "宝宝 育儿 辅食 早教 婴儿 儿童 奶粉 纸尿裤 发烧:1 睡眠训练",
    "母婴>孕产": "孕 产检 月子 待产 顺产 剖腹产 建档 备孕 哺乳",
    "运动>健身": "健身 增肌 跟练 私教 团课 训练:1 练 瑜伽 普拉提",
    "运动>减脂": "减脂 减肥 瘦 掉秤 低卡 热量 卡路里 平台期 代餐",
    "运动>户外": "徒步 露营 户外 爬山 滑雪 骑行 登山 冲锋衣",
    "教育>考试": "考试 备考 真题 上岸 报名 二战 分数 考研 考公 雅思 托福",
    "教育>语言": "英语 日语 韩语 口语 单词 自学:1 语法 打卡:0.5 教材",
    "教育>升学": "留学 申请 升学 择校 录取 毕业 研究生 本科 保研 宿舍条件",
    "职场>求职": "求职 面试 简历 offer 工资 待遇 加班 转行 跳槽 薪资 实习 校招",
    "职场>技能": "技能 快捷键 证书 接单 副业 教程:0.5 能力 自学 excel ppt python",
    "汽车>选购": "买车 落地价 提车 试驾 购车 配置:1 suv 新能源 第一台车 选车",
    "汽车>用车": "保养 用车 车机 异响 掉电 开车 驾照 科目 充电 车险 年检",
    "娱乐>明星": "明星 动态 生图 演唱会 粉丝 采访 造型 神图 抢票",
    "娱乐>影视": "电视剧 电影 大结局 剧 好看吗 拍摄地 彩蛋 原著 剧场版 一期 影评 追剧",
    "娱乐>音乐": "歌 歌词 吉他谱 歌单 翻唱 钢琴 唱 live 新歌 音乐",
    "游戏>手游": "手游 抽卡 阵容 兑换码 入坑 新游 卡顿 游戏:0.5",
    "游戏>主机": "主机 通关 switch ps5 xbox 港版 全收集 隐藏结局",
    "宠物>猫": "猫 猫咪 猫粮 猫砂 猫舍 铲屎官",
    "宠物>狗": "狗 狗狗 遛狗 带狗 狗粮 幼犬 绝育:1",
    "健康>医疗": "医院 挂号 检查 副作用 疼吗 科 药 医生 手术 疫苗",
    "健康>养生": "养生 调理 功效 中医 湿气 气血 泡脚 艾灸",
    "生活>租房": "租房 房租 押金 退租 月租 合租 房东 中介 合同",
    "生活>情感": "分手 恋爱 约会 脱单 吵架 冷暴力 礼物 见家长 男朋友 女朋友 纪念日",
    "生活>摄影": "拍照 摄影 构图 调色 参数:1 直出 胶片 出片 姿势",
    "生活>手工": "手工 diy 编织 手作 图解 体验店 材料:0.5",
    "其他": "运势 读后感 省钱 无聊 注销 会员:0.5 必买清单:0.5",
})


def classify(text: str, domains: Iterable[tuple[str, str]], categories: tuple[str, ...]) -> str:
    """The best-scoring category for a query (`text`: spaces removed) with entity `domains`."""
    scores: dict[str, float] = {}
    for cat, words in KEYWORDS.items():
        for w, weight in words:
            if w in text:
                scores[cat] = scores.get(cat, 0.0) + weight
    for dom in domains:
        cats = DOMAIN_CATEGORIES.get(dom, ())
        for cat in cats:
            scores[cat] = scores.get(cat, 0.0) + 1.0 / len(cats)
    allowed = {c: i for i, c in enumerate(categories)}
    best = [(s, -allowed[c], c) for c, s in scores.items() if c in allowed and s > 0]
    if not best:
        return "其他" if "其他" in allowed else categories[-1]
    return max(best)[2]
